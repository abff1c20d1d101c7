"""The shape of the package: small modules, no import circles, and each outside dependency in its one room.

These read the source; they fail when a change breaks a rule the package is built on, not when code changes:
wandb only in the W&B backend (and the protobuf reader), torch.distributed only in the collectives (and the local
launcher, the training demo and the test probe), the environment only at the public constructors and launchers,
the test doubles never in the logger.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sdxl_dist_log"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
MAX_LINES = 420  # "about 400": a module one can read in one sitting


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _users(prefix: str) -> set[str]:
    return {_rel(p) for p in MODULES if any(m == prefix or m.startswith(prefix + ".") for m in _imports(p))}


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_every_module_is_small(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_no_import_circles() -> None:
    known = {_name(p): p for p in MODULES}
    graph = {name: {m for m in _imports(path) if m in known and m != name and not name.startswith(m + ".")}
             for name, path in known.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_wandb_is_imported_in_its_one_room() -> None:
    assert _users("wandb") <= {"backends/wandb_backend.py", "offline/decode.py"}


def test_torch_distributed_is_imported_in_its_rooms() -> None:
    assert _users("torch.distributed") <= {"collectives.py", "launch/local.py", "testing/probe.py", "demo.py"}


def test_the_environment_is_read_at_the_edges_only() -> None:
    def reads(path: Path) -> bool:
        return any(isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
                   for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))

    readers = {_rel(p) for p in MODULES if reads(p)}
    edges = {"wandb_logger.py", "unified.py", "demo.py", "launch/local.py", "launch/submit.py", "testing/wandb_env.py"}
    assert readers <= edges, readers - edges


def test_the_logger_never_imports_the_test_doubles() -> None:
    users = {u for u in _users("sdxl_dist_log.testing") if not u.startswith("testing/")}
    assert users <= {"demo.py"}, users  # the demo simulates GPUs when asked to
