"""Run directories on disk: find ``offline-run-*``/``run-*`` directories and read one into an :class:`OfflineRun`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sdxl_dist_log.offline.decode import decode_records, read_records
from sdxl_dist_log.offline.model import OfflineRun

_RUN_DIR_RE = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-([A-Za-z0-9_-]+)$")


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and _RUN_DIR_RE.match(path.name) is not None


def _run_sort_key(path: Path) -> tuple[str, float, str]:
    match = _RUN_DIR_RE.match(path.name)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = 0.0
    return (match.group(1) if match else "", mtime, path.name)


def find_run_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """Find run directories (``offline-run-*``, ``run-*``) at ``root``, in it, or in ``root/wandb``, oldest first.

    Args:
        root: a run directory, a directory holding runs (a ``WANDB_DIR/wandb``), or one whose ``wandb/`` does.

    Returns:
        The run directories sorted by the time in their names (then modification time); empty when none.
        The ``latest-run`` symlink is not listed twice.
    """
    base = Path(root)
    if _is_run_dir(base):
        return [base]
    found: dict[Path, Path] = {}
    for parent in (base, base / "wandb"):
        if not parent.is_dir():
            continue
        for child in parent.iterdir():
            if _is_run_dir(child):
                found.setdefault(child.resolve(), child)
    return sorted(found.values(), key=_run_sort_key)


def _wandb_file(run_dir: Path) -> Path:
    candidates = sorted(run_dir.glob("*.wandb"))
    if len(candidates) == 1:
        return candidates[0]
    match = _RUN_DIR_RE.match(run_dir.name)
    if match and (run_dir / f"run-{match.group(2)}.wandb") in candidates:
        return run_dir / f"run-{match.group(2)}.wandb"
    if not candidates:
        raise ValueError(f"no .wandb file in run directory {run_dir}")
    raise ValueError(f"several .wandb files in {run_dir}: {', '.join(str(c) for c in candidates)}")


def _media_files(run_dir: Path) -> list[str]:
    files_dir = run_dir / "files"
    media = files_dir / "media"
    if not media.is_dir():
        return []
    return sorted(p.relative_to(files_dir).as_posix() for p in media.rglob("*") if p.is_file())


def read_run(path: str | os.PathLike[str], *, summary: bool = True) -> OfflineRun:
    """Read an offline run: its records, config, history, summary, artifacts and media files.

    Args:
        path: a run directory, its ``.wandb`` file, or a directory holding exactly one run (directly or under
            ``wandb/``).
        summary: False leaves ``summary`` empty, for readers of the history alone: wandb writes a summary update
            after every history row, so folding them costs about a third of reading a long run.

    Returns:
        The decoded :class:`OfflineRun`; ``truncated`` is set when the file ends in a cut or corrupt tail, and
        ``exit_code`` is None when the run never finished (live or killed).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` holds no run or several (the message lists them), or a run directory has no ``.wandb``
            file; ``WandbFileError`` when the file is not a W&B log.

    Example:
        >>> run = read_run(tmp_path / "wandb")  # doctest: +SKIP
        >>> run.exit_code, len(run.history)  # doctest: +SKIP
        (0, 100)
    """
    given = Path(path)
    if not given.exists():
        raise FileNotFoundError(f"no such run file or directory: {given}")
    if given.is_file():
        wandb_file, run_dir = given, given.parent
    else:
        if _is_run_dir(given) or any(given.glob("*.wandb")):
            run_dir = given
        else:
            runs = find_run_dirs(given)
            if len(runs) != 1:
                what = "no run directories" if not runs else f"{len(runs)} run directories"
                listing = "".join(f"\n  {r}" for r in runs)
                raise ValueError(
                    f"{given} holds {what} (looked for offline-run-*/run-* in it and in its wandb/); "
                    f"pass one run directory{':' if runs else ''}{listing}"
                )
            run_dir = runs[0]
        wandb_file = _wandb_file(run_dir)
    reader = read_records(wandb_file)
    run = OfflineRun(path=run_dir, wandb_file=wandb_file)
    decode_records(run, reader, summary=summary)
    run.truncated, run.truncation_reason = reader.truncated, reader.reason
    if not run.run_id:
        match = _RUN_DIR_RE.match(run_dir.name)
        run.run_id = match.group(2) if match else wandb_file.stem.removeprefix("run-")
    run.media_files = _media_files(run_dir)
    return run
