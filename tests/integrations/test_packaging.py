"""The adapters' optional extras: ``pip install -e '.[accelerate]'`` and ``'.[lightning]'`` bring the frameworks,
and the ``test`` extra has both, so CI runs the adapters' tests with the real frameworks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_extras_name_the_frameworks_and_the_test_extra_has_both() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["accelerate"]] == ["accelerate"]
    assert [d.split(">")[0] for d in extras["lightning"]] == ["lightning"]
    assert set(extras["accelerate"] + extras["lightning"]) <= set(extras["test"])


def test_importing_the_package_imports_neither_framework() -> None:
    import subprocess

    code = "import sys, sdxl_dist_log; print(sorted(m for m in ('accelerate', 'lightning') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
