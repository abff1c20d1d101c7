"""Run the code blocks of README.md and docs/*.md as a reader would, and compare the outputs they show.

Every fenced block carries a marker, an HTML comment on the line just above its opening fence (GitHub does not
render it):

    <!-- doc: run -->                  run it: a python block as a script; a bash block line by line; a console
                                       block's ``$ `` lines, each one's shown output compared with the real one
    <!-- doc: run abridged -->         the same; the shown output leaves lines out, and the page says so
    <!-- doc: file NAME -->            write the block to NAME (a script a later block runs); run nothing
    <!-- doc: output CMD -->           the block shows the output of CMD (run earlier on the page, or now)
    <!-- doc: scaled CMD -->           cannot run here as written (GPUs, nodes): CMD, a smaller form, runs instead
    <!-- doc: slurm -->                as ``run``, on the local SLURM cluster (tests marked ``slurm``)
    <!-- doc: benchmark SCRIPT -->     output of a benchmark (timings belong in benchmarks/): SCRIPT --help runs
    <!-- doc: tested-by FILE::TEST --> a transcript of a cluster session (job ids, requeue timing): the named test,
                                       which must exist, runs the same commands against the local SLURM cluster
    <!-- doc: not-code -->             a synopsis or a listing, not something to run

Commands run in one scratch folder for all pages (a reader going through the docs in one checkout), page by page
in order, as in an activated venv (its ``bin`` first on PATH; ``.venv``, ``examples``, ``slurm``, ``benchmarks``,
``docs`` link to the checkout), with a private W&B home and TMPDIR. The same command runs once (``.venv/bin/X`` is
``X``) and its output serves every block that shows it: the demo runs once for README.md and quickstart.md. Install
lines (``python3 -m venv``, ``pip install``), ``bash tests/run_all.sh`` and the cluster scripts it runs are what
``.ci/run`` and ``tests/run_all.sh`` run: they are checked to be there, not run inside the suite they start.

Shown and real outputs are compared after normalising what differs between runs: times, dates, run ids, numbers,
absolute paths, and `` <- `` annotations (the page's own remarks). Every shown line must appear in the real output,
in order; a block that leaves real lines out must be marked ``abridged``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KINDS = ("run", "file", "output", "scaled", "slurm", "benchmark", "tested-by", "not-code")
LINKED = (".venv", "examples", "slurm", "benchmarks", "docs", "tests")
COMMAND_TIMEOUT_S = 300

_FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*doc:\s*(?P<kind>[a-z-]+)\s*(?P<arg>.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced block and its marker."""

    page: Path
    line: int
    lang: str
    text: str
    kind: str | None
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def abridged(self) -> bool:
        return self.arg.split()[:1] == ["abridged"] or self.arg.endswith(" abridged")


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, each with the marker on the line above its fence (or None)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        opened = _FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        fence, lang = opened.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(fence) and not lines[j].strip("`"))
        marker = _MARKER.match(lines[i - 1].strip()) if i else None
        out.append(Block(page, i + 1, lang, "\n".join(lines[i + 1:end]),
                         marker["kind"] if marker else None, marker["arg"] if marker else ""))
        i = end + 1
    return out


# -- normalising outputs ---------------------------------------------------------------------------------------------
_NORMALISE = [
    (re.compile(r"\s+<- .*$"), ""),  # the page's annotations
    (re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(,\d+)?"), "<TIME>"),
    (re.compile(r"\d{8}_\d{6}"), "<TIME>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<UUID>"),
    (re.compile(r"(?<![\w.])(?:/[\w.+@-]+)+/"), "<PATH>/"),
    (re.compile(r"\b[0-9a-f]{8,12}\b"), "<ID>"),
    (re.compile(r"\d+(\.\d+)?(e[-+]?\d+)?"), "N"),
    (re.compile(r"\s+"), " "),
]


def normalise(line: str) -> str:
    """A line with what differs between runs replaced by placeholders."""
    for pattern, replacement in _NORMALISE:
        line = pattern.sub(replacement, line)
    return line.strip()


def check_tested_by(node: str) -> None:
    """Check that the test ``FILE::NAME`` exists.

    Raises:
        AssertionError: no such file or no such test function in it.
    """
    file, _, name = node.partition("::")
    path = ROOT / file
    assert path.exists() and f"def {name}(" in path.read_text(encoding="utf-8"), f"no test {node}"


def compare(shown: str, real: str, *, abridged: bool, where: str) -> None:
    """Check that every shown line is in the real output, in order; unless ``abridged``, that none is left out.

    Raises:
        AssertionError: naming the first shown line that is not in the real output, or the real lines left out.
    """
    real_lines = [normalise(x) for x in real.splitlines() if x.strip()]
    shown_lines = [normalise(x) for x in shown.splitlines() if x.strip() and x.strip() != "..."]
    position = 0
    for line in shown_lines:
        try:
            position = real_lines.index(line, position) + 1
        except ValueError:
            raise AssertionError(f"{where}: the shown line {line!r} is not in the real output (normalised):\n"
                                 + "\n".join(real_lines)) from None
    if not abridged and len(shown_lines) != len(real_lines):
        missing = [x for x in real_lines if x not in shown_lines]
        raise AssertionError(f"{where}: the shown output leaves out {len(missing)} real lines without saying "
                             f"(mark it 'abridged'), e.g. {missing[:3]}")


# -- running ---------------------------------------------------------------------------------------------------------
INSTALL = re.compile(r"^(python3 -m venv |\S*pip install |bash tests/run_all\.sh|bash slurm/st(art|op)_cluster\.sh)")
CI_SCRIPTS = (ROOT / ".ci" / "run", ROOT / "tests" / "run_all.sh")


@dataclass
class Page:
    """The scratch folder of one page and the outputs of the commands run in it so far."""

    scratch: Path
    env: dict[str, str]
    outputs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, scratch: Path) -> Page:
        from sdxl_dist_log.testing.wandb_env import CLEARED, wandb_environment

        scratch.mkdir(parents=True, exist_ok=True)
        for name in LINKED:
            target = Path(sys.prefix) if name == ".venv" else ROOT / name
            if not (scratch / name).exists():
                (scratch / name).symlink_to(target)
        env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        env.update(wandb_environment(scratch))
        (scratch / "tmp").mkdir(exist_ok=True)
        env.update(PATH=f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=sys.prefix,
                   TMPDIR=str(scratch / "tmp"), PYTHONUNBUFFERED="1")
        return cls(scratch, env)

    def run(self, command: str) -> str | None:
        """Run one shell command here (once); its output, stdout and stderr interleaved; None for a CI command.

        Raises:
            AssertionError: the command failed; the message holds its output.
        """
        command = command.removeprefix(".venv/bin/")  # the same command, as in an activated venv
        if command in self.outputs:
            return self.outputs[command]
        if INSTALL.match(command):
            ci = " ".join(path.read_text(encoding="utf-8") for path in CI_SCRIPTS)
            key = command if command.startswith(("python3", ".venv", "pip")) else " ".join(command.split()[:2])
            assert _ci_form(key) in _ci_form(ci), f"{command!r} is not what .ci/run or tests/run_all.sh runs"
            return None
        done = subprocess.run(["bash", "-c", command], cwd=self.scratch, env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT_S)
        output = done.stdout  # stderr interleaved, as a terminal shows it
        assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{output[-4000:]}"
        self.outputs[command] = output
        return output


def _ci_form(text: str) -> str:
    return " ".join(text.replace(" -q", "").replace(".venv/bin/", "").split())


def commands(block: Block) -> list[tuple[str, str]]:
    """A shell block's (command, shown output) pairs: ``$ `` lines in a console block, every line in a bash block.

    A bash line may hold several commands joined by ``&&``; they are split, so an install part is checked against
    .ci/run and the rest runs. Comments after a command are dropped.
    """
    if block.lang == "console":
        pairs: list[tuple[str, str]] = []
        for line in block.text.splitlines():
            if line.startswith("$ "):
                pairs.append((_uncomment(line[2:]), ""))
            elif pairs:
                pairs[-1] = (pairs[-1][0], pairs[-1][1] + line + "\n")
        return pairs
    out = []
    for line in block.text.splitlines():
        command = _uncomment(line)
        if command:
            out.extend((part.strip(), "") for part in command.split(" && "))
    return out


def _uncomment(line: str) -> str:
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return line.strip()
    if not words:
        return ""
    cut = line.find(" #")
    return (line[:cut] if cut >= 0 else line).strip()
