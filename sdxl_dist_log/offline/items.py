"""Items of history, summary and config records -> Python values and nested dicts, in one pass each.

A long run has millions of items (a 10,000-row run of 32 GPUs: 2 million history values, and as many again in the
summary records, since wandb writes a summary update after every row), so the per-item work is kept to reading
two protobuf fields, one C-level JSON scan and one dict store:

* a value's ``value_json`` is scanned by the json module's C scanner directly; only text that is not a single
  JSON value (surrounding whitespace, not JSON at all) goes through ``json.loads`` to decide, with the same result;
* a summary or config is folded as pending JSON text: each item stores its text, and only what is left in the end
  (the last value of every key) is decoded; a later item under a key whose value is still text decodes it first,
  so the result equals decoding every item and applying them in order (``apply_update``).

Works on the protobuf messages it is given (duck-typed); it imports neither wandb nor protobuf.
"""

from __future__ import annotations

import json
from json.scanner import make_scanner
from typing import Any

from sdxl_dist_log.offline.model import flatten

_scan_once = make_scanner(json.JSONDecoder())


def decode_json(text: str) -> Any:
    """``json.loads(text)``, or ``text`` itself when it is not JSON (a value wandb stored as a plain string).

    Example:
        >>> decode_json("1.5"), decode_json(' {"a": [1, null]} '), decode_json("not json")
        (1.5, {'a': [1, None]}, 'not json')
    """
    try:
        value, end = _scan_once(text, 0)
    except (StopIteration, ValueError):  # no value at offset 0 (whitespace, a BOM, no JSON), or a broken one
        end = -1
    if end == len(text):
        return value
    try:
        return json.loads(text)
    except ValueError:
        return text


def item_path(item: Any) -> list[str]:
    """The key parts of an item: its ``nested_key`` when set, else ``[key]``."""
    parts = item.nested_key
    return list(parts) if len(parts) else [item.key]


def item_value(item: Any) -> Any:
    """The decoded value of a history/summary/config item (``value_json``, or the typed oneof if present)."""
    text = item.value_json
    if text:
        return decode_json(text)
    which = item.WhichOneof("value") if "value" in {o.name for o in item.DESCRIPTOR.oneofs} else None
    if which is None or which == "none":
        return None
    value = getattr(item, which)
    return decode_json(value) if which == "json" else value


# A value still to decode is kept as the 1-tuple ``(value_json,)``: a decoded value is never a tuple.


def _pending(item: Any) -> Any:
    text = item.value_json
    return (text,) if text else item_value(item)


def _decoded(value: Any) -> Any:
    return decode_json(value[0]) if type(value) is tuple else value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = _decoded(node.get(part))
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[path[-1]] = value


def _del_path(tree: dict[str, Any], path: list[str]) -> None:
    node: Any = tree
    for part in path[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        node[part] = node = _decoded(node[part])
    if isinstance(node, dict):
        node.pop(path[-1], None)


def fold_update(tree: dict[str, Any], record: Any) -> None:
    """Fold a ``ConfigRecord`` or ``SummaryRecord`` into ``tree``, leaving new values as pending JSON text.

    Call :func:`finish_fold` on ``tree`` after the last record; :func:`apply_update` does both for one record.
    """
    for item in record.update:
        parts = item.nested_key
        count = len(parts)
        if count == 1:
            tree[parts[0]] = _pending(item)
        elif count == 0:
            tree[item.key] = _pending(item)
        else:
            _set_path(tree, list(parts), _pending(item))
    for item in record.remove:
        _del_path(tree, item_path(item))


def finish_fold(tree: dict[str, Any]) -> dict[str, Any]:
    """Decode the values :func:`fold_update` left pending in ``tree`` (in place); returns ``tree``."""
    for key, value in tree.items():
        if type(value) is tuple:
            tree[key] = decode_json(value[0])
        elif type(value) is dict:
            finish_fold(value)
    return tree


def apply_update(tree: dict[str, Any], record: Any) -> None:
    """Fold a ``ConfigRecord`` or ``SummaryRecord`` into a nested dict: set its ``update`` items, drop its ``remove``s.

    Both record types carry the same ``update``/``remove`` lists of ``key``/``nested_key``/``value_json`` items, so
    config and summary are folded the same way; a nested key sets or drops one leaf of a nested dict.
    """
    fold_update(tree, record)
    finish_fold(tree)


def history_row(record: Any) -> dict[str, Any]:
    """One ``HistoryRecord`` as a flat row: ``/``-joined keys (see ``flatten``), ``_step`` from the record's step."""
    row: dict[str, Any] = {}
    flat = True
    scan = _scan_once
    for item in record.item:
        parts = item.nested_key
        count = len(parts)
        text = item.value_json
        try:  # decode_json, inlined: this loop runs once per value of the run
            value, end = scan(text, 0)
        except (StopIteration, ValueError):
            end = -1
        if end != len(text):
            value = decode_json(text) if text else item_value(item)
        if type(value) is dict:
            flat = False
        if count == 1:
            row[parts[0]] = value
        elif count == 0:
            row[item.key] = value
        else:
            _set_path(row, list(parts), value)
            flat = False
    if not flat:  # nested keys, or a dict value: flatten joins them as it always has
        row = flatten(row)
    if "_step" not in row and record.HasField("step"):
        row["_step"] = record.step.num
    return row
