"""Items -> values (``sdxl_dist_log.offline.items``): the one-pass fold and decoding equal the item-by-item rules.

The reference below is the plain reading of the records: decode every item with ``json.loads`` (a value that is
not JSON stays a string), then set or drop its path in order. The fast paths (pending JSON text, the C scanner,
flat rows without ``flatten``) must give the same values, in the same key order.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sdxl_dist_log.offline import OfflineRun, flatten, read_records
from sdxl_dist_log.offline.items import apply_update, decode_json, finish_fold, fold_update, history_row


def _ref_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _ref_path(item: Any) -> list[str]:
    return list(item.nested_key) if len(item.nested_key) else [item.key]


def _ref_set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _ref_del(tree: dict[str, Any], path: list[str]) -> None:
    node: Any = tree
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _ref_fold(tree: dict[str, Any], record: Any) -> None:
    for item in record.update:
        _ref_set(tree, _ref_path(item), _ref_value(item.value_json))
    for item in record.remove:
        _ref_del(tree, _ref_path(item))


def _update_record(kind: str, updates: list[tuple[list[str], str]], removes: list[list[str]] = ()) -> Any:
    """A ``ConfigRecord`` or ``SummaryRecord``; a one-part path goes in ``key``, a longer one in ``nested_key``."""
    from wandb.proto import wandb_internal_pb2 as pb

    record = pb.ConfigRecord() if kind == "config" else pb.SummaryRecord()
    for items, entries in ((record.update, updates), (record.remove, [(path, "") for path in removes])):
        for path, value_json in entries:
            item = items.add()
            if len(path) == 1:
                item.key = path[0]
            else:
                item.nested_key.extend(path)
            item.value_json = value_json
    return record


@pytest.mark.parametrize("kind", ["config", "summary"])
def test_apply_update_sets_and_removes_nested_items(kind: str) -> None:
    tree: dict[str, Any] = {"keep": 1, "model": {"depth": 3, "heads": 8}, "gone": 2}
    record = _update_record(
        kind,
        updates=[(["lr"], json.dumps(0.1)), (["model", "depth"], json.dumps(4)), (["note"], "not json")],
        removes=[["gone"], ["model", "heads"], ["absent", "leaf"]],
    )
    apply_update(tree, record)
    assert tree == {"keep": 1, "lr": 0.1, "model": {"depth": 4}, "note": "not json"}


@pytest.mark.parametrize("text", ["1", "1.8e+09", "-0", "NaN", "Infinity", "true", "null", '"s"', "[1, 2]",
                                  '{"a": {"b": [1]}}', " 1", "1 ", "\ufeff1", "1 2", "[1", "", "not json", "1,2"])
def test_decode_json_is_json_loads_or_the_text(text: str) -> None:
    got, want = decode_json(text), _ref_value(text)
    assert json.dumps(got) == json.dumps(want) and type(got) is type(want)


def test_fold_of_many_records_equals_applying_each_in_order() -> None:
    """Pending text under a key that a later record nests into, drops from, or replaces: the same as in order."""
    records = [
        _update_record("summary", [(["a"], '{"x": 1, "y": 2}'), (["b"], "1"), (["c"], "[1]"), (["d"], '"s"')]),
        _update_record("summary", [(["a", "z"], "3"), (["b", "q"], "4"), (["e"], "{bad")], removes=[["a", "x"]]),
        _update_record("summary", [(["c"], "2"), (["f", "g", "h"], "5"), (["b"], '{"r": 6}')],
                       removes=[["d", "nope"], ["e"]]),
        _update_record("summary", [(["f", "g"], "null"), (["a", "y"], " 7 ")], removes=[["f", "g", "h"]]),
        _update_record("summary", [(["b", "r", "deep"], "8"), (["_wandb", "runtime"], "9")]),
    ]
    want: dict[str, Any] = {}
    got: dict[str, Any] = {}
    for record in records:
        _ref_fold(want, record)
        fold_update(got, record)
    assert finish_fold(got) == want
    assert json.dumps(got) == json.dumps(want), "same keys in the same order"


def test_read_run_summary_config_and_rows_equal_the_records_applied_one_by_one(full_run: OfflineRun) -> None:
    """The folded summary is the last state of the summary records, the config that of the config records, and each
    history row its items decoded one by one (on the real run: nested keys, images, a removed summary key)."""
    summary: dict[str, Any] = {}
    config: dict[str, Any] = {}
    rows = []
    for record in read_records(full_run.wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            _ref_fold(summary, record.summary)
        elif kind in ("config", "run"):
            _ref_fold(config, record.config if kind == "config" else record.run.config)
        elif kind == "history":
            tree: dict[str, Any] = {}
            for item in record.history.item:
                _ref_set(tree, _ref_path(item), _ref_value(item.value_json))
            row = flatten(tree)
            if "_step" not in row and record.history.HasField("step"):
                row["_step"] = record.history.step.num
            rows.append(row)
    summary.pop("_wandb", None)
    config.pop("_wandb", None)
    assert full_run.summary == flatten(summary) and list(full_run.summary) == list(flatten(summary))
    assert full_run.config == config
    assert full_run.history == rows and [list(row) for row in full_run.history] == [list(row) for row in rows]
    assert summary, "the run has a summary to compare"


def test_history_row_nested_and_dict_values_are_flattened() -> None:
    from wandb.proto import wandb_internal_pb2 as pb

    record = pb.HistoryRecord()
    for path, text in ((["a"], "1"), (["n", "x"], "2"), (["d"], '{"e": 3}'), (["img"], '{"_type": "image-file"}')):
        item = record.item.add()
        item.nested_key.extend(path)
        item.value_json = text
    record.step.num = 4
    assert history_row(record) == {"a": 1, "n/x": 2, "d/e": 3, "img": {"_type": "image-file"}, "_step": 4}


def test_a_long_summary_keeps_the_last_value_of_every_key() -> None:
    """As wandb writes it: a summary update after every row; the folded summary holds each key's last value."""
    records = [_update_record("summary", [([f"k{i % 7}"], str(i)), (["step"], str(i))]) for i in range(50)]
    got: dict[str, Any] = {}
    for record in records:
        fold_update(got, record)
    assert finish_fold(got) == {**{f"k{i}": 49 - (49 - i) % 7 for i in range(7)}, "step": 49}


def test_read_run_without_summary_skips_only_the_summary(full_run: OfflineRun) -> None:
    """``summary=False`` (the report's read): the summary stays empty, its records still counted, all else equal."""
    import dataclasses

    from sdxl_dist_log.offline import read_run

    bare = read_run(full_run.path, summary=False)
    assert bare.summary == {} and full_run.summary
    assert bare.record_counts == full_run.record_counts and bare.record_counts["summary"] >= 1
    assert dataclasses.replace(bare, summary=full_run.summary) == full_run
