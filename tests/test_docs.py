"""The documentation runs as written: every code block of README.md and docs/ is run (or its scaled-down form), and
every output it shows is compared with a real one (``docs_support.py`` says how blocks are marked). Generated
reference pages match the source: docs/configuration.md never drifts."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from sdxl_dist_log.config import LogConfig, WandbConfig

sys.path.insert(0, os.path.dirname(__file__))  # docs_support.py
from docs_support import KINDS, PAGES, Block, Page, blocks, check_tested_by, commands, compare, normalise  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]


# -- every block runs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_block_says_how_it_runs(page: Path) -> None:
    unmarked = [b.where for b in blocks(page) if b.kind not in KINDS]
    assert not unmarked, f"blocks without a <!-- doc: KIND --> marker (KIND in {KINDS}): {unmarked}"


def _run_block(block: Block, page: Page) -> None:
    if block.kind in ("not-code", None):
        return
    if block.kind == "slurm":
        block = dataclasses.replace(block, kind="run")
    if block.kind == "file":
        (page.scratch / block.arg).write_text(block.text + "\n", encoding="utf-8")
    elif block.kind == "benchmark":
        page.run(f"python {block.arg} --help")
    elif block.kind == "tested-by":
        check_tested_by(block.arg)
    elif block.kind == "scaled":
        page.run(block.arg)
    elif block.kind == "output":
        compare(block.text, page.run(block.arg.removesuffix(" abridged")), abridged=block.abridged,
                where=block.where)
    elif block.lang == "python":
        script = page.scratch / f"{block.page.stem}_{block.line}.py"
        script.write_text(block.text + "\n", encoding="utf-8")
        page.run(f"python {script.name}")
    else:
        for command, shown in commands(block):
            real = page.run(command)
            if real is not None and shown.strip():
                compare(shown, real, abridged=block.abridged, where=f"{block.where} ({command})")


def _page_blocks(page: Path, slurm: bool) -> list[Block]:
    """The blocks that run without the cluster, or those that need it (with the files they use)."""
    return [b for b in blocks(page) if (b.kind == "slurm") is slurm or (slurm and b.kind == "file")]


RUNNABLE = [p for p in PAGES if any(b.kind not in ("not-code", "slurm") for b in _page_blocks(p, False))]
ON_SLURM = [p for p in PAGES if _page_blocks(p, True)]


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """One scratch checkout for every page, as one reader would go through them."""
    page = Page.create(tmp_path_factory.mktemp("reader"))
    yield page
    shutil.rmtree(page.scratch / "tmp", ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_page_runs_as_written(page: Path, reader: Page) -> None:
    """Each block in page order: commands succeed, scripts exit 0, shown outputs are real."""
    for block in _page_blocks(page, slurm=False):
        _run_block(block, reader)


@pytest.mark.slurm
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("page", ON_SLURM, ids=[str(p.relative_to(ROOT)) for p in ON_SLURM])
def test_page_runs_on_the_local_slurm_cluster(page: Path, reader: Page) -> None:
    if os.environ.get("SDXL_SKIP_SLURM") == "1":
        pytest.skip("SDXL_SKIP_SLURM=1")
    try:
        subprocess.run(["sinfo", "-h"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        pytest.fail("the local SLURM cluster does not answer sinfo: start it with `bash slurm/start_cluster.sh`",
                    pytrace=False)
    for block in _page_blocks(page, slurm=True):
        _run_block(block, reader)


# -- the runner itself -----------------------------------------------------------------------------------------------
def test_normalise_keeps_words_and_drops_what_differs_between_runs() -> None:
    a = normalise("2026-11-26 12:06:55,518 [rank 0] INFO W&B run b9818b0b (offline) in /tmp/x/wandb/off-N; x=0.16")
    b = normalise("2026-11-30 08:41:06,725 [rank 0] INFO W&B run 97030c4a (offline) in /work/y/wandb/off-N; x=2")
    assert a == b and "W&B run <ID> (offline) in <PATH>/off-N" in a
    assert normalise("  ckpt:v0 (model)   <- both ranks") == normalise("ckpt:v1 (model)")


def test_compare_needs_every_shown_line_in_order_and_abridged_said() -> None:
    real = "a 1\nb 2\nc 3\n"
    compare("a 7\nc 9", real, abridged=True, where="x")
    with pytest.raises(AssertionError, match="leaves out 1 real lines"):
        compare("a 7\nc 9", real, abridged=False, where="x")
    with pytest.raises(AssertionError, match="'d N' is not in the real output"):
        compare("a 1\nd 4", real, abridged=True, where="x")
    with pytest.raises(AssertionError, match="'a N' is not"):
        compare("c 1\na 1", real, abridged=True, where="x")  # order matters


def test_commands_of_a_console_block_pair_each_with_its_output() -> None:
    block = Block(ROOT / "README.md", 1, "console", "$ echo a  # say a\na\n$ true && echo b\nb", "run")
    assert commands(block) == [("echo a", "a\n"), ("true && echo b", "b\n")]
    bash = Block(ROOT / "README.md", 1, "bash", "# comment\npython3 -m venv .venv && .venv/bin/x demo  # go", "run")
    assert commands(bash) == [("python3 -m venv .venv", ""), (".venv/bin/x demo", "")]


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
