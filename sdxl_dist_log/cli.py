"""The ``sdxl-dist-log`` command: ``demo``, ``inspect`` and ``submit``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sdxl_dist_log.offline import find_run_dirs, format_run, read_run

    status = 0
    for index, given in enumerate(args.run_dir):
        path = Path(given)
        # a folder of several runs (the parts of a requeued run, say): show each
        runs = find_run_dirs(path) if path.is_dir() and not list(path.glob("*.wandb")) else [path]
        for run_path in runs or [path]:
            try:
                summary = format_run(read_run(run_path))
            except (FileNotFoundError, ValueError) as exc:
                print(f"sdxl-dist-log inspect: {run_path}: {exc}", file=sys.stderr)
                status = 2
                continue
            print(("\n" if index or run_path != runs[0] else "") + summary)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdxl-dist-log", description="Rank-aware W&B logging for distributed jobs")
    sub = parser.add_subparsers(dest="command", required=True)
    from sdxl_dist_log import demo

    demo_parser = sub.add_parser("demo", help="train a tiny model on N local ranks into a W&B offline run")
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(func=demo.run_from_args)
    inspect_parser = sub.add_parser("inspect", help="summarise an offline W&B run directory")
    inspect_parser.add_argument("run_dir", nargs="+",
                                help="run directories, .wandb files, or folders holding runs (each run is shown)")
    inspect_parser.set_defaults(func=_inspect)
    try:
        from sdxl_dist_log.launch.cli_submit import add_submit_parser, run_submit
    except ImportError:  # pragma: no cover - the submit command ships with the launch module
        pass
    else:
        add_submit_parser(sub).set_defaults(func=run_submit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
