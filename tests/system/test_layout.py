"""The shape of sdxl_dist_log.system: small modules, imports that only point down, one broad catch, no environment.

These read the source; they fail when a change breaks a rule the package is built on, not when code changes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sdxl_dist_log"
SYSTEM = PACKAGE / "system"
# bottom to top: a module may import only modules listed before it
ORDER = ("gpus", "fields", "guard", "samplers", "wire", "rows", "collector", "service")
ALLOWED_OUTSIDE = {"sdxl_dist_log.ranks"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_every_module_is_listed_and_small() -> None:
    modules = sorted(p.stem for p in SYSTEM.glob("*.py") if p.stem != "__init__")
    assert modules == sorted(ORDER)
    for path in SYSTEM.glob("*.py"):
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 400, path.name


@pytest.mark.parametrize("name", ORDER)
def test_imports_point_down(name: str) -> None:
    below = {f"sdxl_dist_log.system.{m}" for m in ORDER[:ORDER.index(name)]}
    ours = {m for m in _imports(SYSTEM / f"{name}.py") if m.startswith("sdxl_dist_log")}
    assert ours <= below | ALLOWED_OUTSIDE, ours - below - ALLOWED_OUTSIDE


def test_one_broad_catch_and_no_environment() -> None:
    broad: list[str] = []
    for path in SYSTEM.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ExceptHandler):
                caught = node.type
                if caught is None or (isinstance(caught, ast.Name) and caught.id in ("Exception", "BaseException")):
                    broad.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                pytest.fail(f"{path.name}:{node.lineno} reads the environment")
    assert len(broad) == 1 and broad[0].startswith("guard.py:"), broad


def test_production_code_never_imports_the_test_doubles() -> None:
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "testing" or relative == Path("demo.py"):  # the demo may simulate GPUs on request
            continue
        assert not any(m.startswith("sdxl_dist_log.testing") for m in _imports(path)), relative
