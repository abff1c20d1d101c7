"""Documentation that is generated from the source must match it: docs/configuration.md never drifts."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from sdxl_dist_log.config import LogConfig, WandbConfig

ROOT = Path(__file__).resolve().parent.parent


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_reference", ROOT / "docs" / "gen_config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _generator()


def test_configuration_md_is_up_to_date(gen: ModuleType) -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert gen.generated_block(doc) == gen.render(), (
        "docs/configuration.md is out of date; run: python docs/gen_config_reference.py --write"
    )


@pytest.mark.parametrize("cls", [WandbConfig, LogConfig], ids=lambda c: c.__name__)
def test_every_field_is_documented_with_its_real_default(gen: ModuleType, cls: type) -> None:
    import ast

    _, rows = gen.fields_of(ast.parse(gen.SOURCE.read_text(encoding="utf-8")), cls.__name__)
    assert [r[0] for r in rows] == [f.name for f in dataclasses.fields(cls)]
    instance = cls()
    for name, _, default, doc in rows:
        assert doc.strip(), f"{cls.__name__}.{name} has an empty docstring"
        assert repr(getattr(instance, name)) == default, name  # the table shows what a default instance holds


def test_render_escapes_pipes_and_folds_lines(gen: ModuleType) -> None:
    source = '''
from dataclasses import dataclass, field
@dataclass
class WandbConfig:
    """Doc."""
    a: int | None = None
    """first line
    second | line"""
    b: list[str] = field(default_factory=list)
    """B."""
@dataclass
class LogConfig:
    c: str = "x"
    """C."""
'''
    text = gen.render(source)
    assert "| `a` | `int \\| None` | `None` | first line second \\| line |" in text
    assert "| `b` | `list[str]` | `[]` | B. |" in text
    assert "| `c` | `str` | `'x'` | C. |" in text


def test_render_rejects_undocumented_field(gen: ModuleType) -> None:
    source = "class WandbConfig:\n    a: int = 1\nclass LogConfig:\n    pass\n"
    with pytest.raises(ValueError, match="WandbConfig.a has no docstring"):
        gen.render(source)


# -- docs/distributed.md's table of errors matches the tests ---------------------------------------------------------
def _error_rows() -> list[list[str]]:
    doc = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    table = doc.split("### Errors", 1)[1].split("\n\n", 2)[2].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()]
    assert rows[0] == ["what went wrong", "raised by", "on which ranks", "type", "tested by"], rows[0]
    return rows[2:]


def _defines(path: Path, name: str) -> bool:
    import ast

    return any(isinstance(node, ast.FunctionDef) and node.name == name
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))


def test_every_documented_error_case_names_exported_types_and_tests_that_exist() -> None:
    """Each row's types are exported errors, and each test it names exists and concerns those types."""
    import re

    import sdxl_dist_log
    from sdxl_dist_log.errors import SdxlDistLogError

    for what, _, _, types, tests in _error_rows():
        names = re.findall(r"`(\w+)`", types)
        assert names, what
        for name in names:
            assert name in sdxl_dist_log.__all__ and issubclass(getattr(sdxl_dist_log, name), SdxlDistLogError), name
        for test in re.findall(r"`([^`]+)`", tests):
            path, function = test.split("::")
            assert _defines(ROOT / path, function), f"{test} (row {what!r}) does not exist"
            module = (ROOT / path).read_text(encoding="utf-8")
            assert any(name in module for name in names), f"{test} never mentions {names}"


def test_every_exported_error_is_in_the_table() -> None:
    import re

    import sdxl_dist_log
    from sdxl_dist_log.errors import SdxlDistLogError

    documented = {name for row in _error_rows() for name in re.findall(r"`(\w+)`", row[3])}
    exported = {name for name in sdxl_dist_log.__all__ if isinstance(getattr(sdxl_dist_log, name), type)
                and issubclass(getattr(sdxl_dist_log, name), SdxlDistLogError)}
    assert exported - documented == {"SdxlDistLogError"}  # the base: every row is one of its kinds
