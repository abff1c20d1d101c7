"""Preemption on the real local SLURM cluster: rows kept and time from the signal to the closed run, over many signal
times spread over a step, ours next to plain wandb with a SIGTERM handler (the peers' pattern).

Each arm is one job requeued ``--tries`` times (``scontrol requeue``: SIGTERM to every process of the step, wandb-core
included, since the cluster tracks processes with proctrack/linuxproc), attempt k signalled ``k / tries`` of a step
period after its last step's logging call returned; then ``--term`` jobs preempted without requeue (``scancel
--signal=TERM``). A step is ``--step-time`` seconds plus the logging call. Per arm it prints: steps whose logging
call returned before their attempt's signal (required) and how many of them are in no part of the run (lost);
attempts whose last part has the preempting mark and an exit record; for ours, the time from the signal reaching
the logger to the closed run (journal) and from ``scontrol``/``scancel`` to the closed run.

Needs the cluster (``bash slurm/start_cluster.sh``). Run from the repository root:

    .venv/bin/python benchmarks/bench_preemption.py                   # --tries 20 --term 4: ~8 min here
    .venv/bin/python benchmarks/bench_preemption.py --tries 6 --term 1 --arms ours
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdxl_dist_log.testing import preempt  # noqa: E402
from sdxl_dist_log.testing.wandb_env import wandb_environment  # noqa: E402

SCRIPTS = {"ours": ROOT / "examples" / "preemptible_train.py", "plain wandb": ROOT / "benchmarks" /
           "preempt_plain_wandb.py"}


def _job(folder: Path, script: Path, steps: int, step_time: float, requeue: bool) -> tuple[str, Path]:
    folder.mkdir(parents=True)
    return preempt.submit_preemptible(folder, script, steps=steps, step_time=step_time, requeue=requeue,
                                      job_name="bench-preempt", env={**os.environ, **wandb_environment(folder)})


def _period(out: Path) -> float:
    """The median time between two steps' logging calls returning (a step: step time + the call itself)."""
    times = [t for _, _, t in preempt.progress(out)]
    return statistics.median(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else 0.1


def sweep(name: str, folder: Path, tries: int, step_time: float) -> dict:
    """One job requeued ``tries`` times at spread offsets; returns the figures."""
    job, out = _job(folder, SCRIPTS[name], steps=4 * (tries + 1) + 10, step_time=step_time, requeue=True)
    deadline = time.monotonic() + 60 + 30 * tries
    def offset_of(attempt: int) -> float:  # k/n of a step period, measured on the attempts before
        return (_period(out) if attempt else step_time) * attempt / tries

    signals = preempt.preempt_and_resume(out, job, "requeue", deadline=deadline, tries=tries, offset_of=offset_of,
                                         after_steps=3)
    return _figures(out, signals)


def term(name: str, folder: Path, jobs: int, step_time: float) -> dict:
    """``jobs`` jobs preempted once each without requeue (scancel --signal=TERM), at spread offsets."""
    figures = []
    for index in range(jobs):
        job, out = _job(folder / f"job{index}", SCRIPTS[name], steps=500, step_time=step_time, requeue=False)
        sent = preempt.preempt_once(out, job, "term", offset=step_time * index / jobs,
                                    deadline=time.monotonic() + 120)
        figures.append(_figures(out, [(0, sent)]))
    return {k: sum(f[k] for f in figures) if isinstance(figures[0][k], int) else [x for f in figures for x in f[k]]
            for k in figures[0]}


def _figures(out: Path, signals: list[tuple[int, float]]) -> dict:
    report = preempt.check(out, signals)
    sent = dict(signals)
    timed = [a for a in report.attempts if a.close_s is not None and a.index in sent]
    closes = [a.close_s for a in timed]
    from_command = [a.closed_at - sent[a.index] for a in timed]
    preempted = [a for a in report.attempts if a.signal]
    # plain wandb keeps no journal: one part per attempt, whose file says how it ended
    closed_ok = (sum(1 for a in preempted if a.last_part_marked and a.last_part_exit is not None) if report.attempts
                 else report.closed_with_mark)
    return {"signals": len(signals), "required": len(report.required), "lost": len(report.missing),
            "closed_with_mark": closed_ok, "parts": report.parts, "close_s": closes, "command_to_closed_s": from_command}


def _row(name: str, kind: str, f: dict) -> str:
    def span(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"

    return (f"| {name} | {kind} | {f['signals']} | {f['required']} | {f['lost']} | {f['closed_with_mark']}/"
            f"{f['signals']} | {f['parts']} | {span(f['close_s'])} | {span(f['command_to_closed_s'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=20, help="requeues of the sweep job (signal times)")
    parser.add_argument("--term", type=int, default=4, help="jobs preempted by scancel --signal=TERM")
    parser.add_argument("--step-time", type=float, default=0.1)
    parser.add_argument("--arms", nargs="+", default=list(SCRIPTS), choices=list(SCRIPTS))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-preempt-") as tmp:
        for name in args.arms:
            key = name.replace(" ", "_")
            results[f"{name} requeue"] = sweep(name, Path(tmp) / f"{key}-sweep", args.tries, args.step_time)
            if args.term:
                results[f"{name} scancel TERM"] = term(name, Path(tmp) / f"{key}-term", args.term, args.step_time)
    print(f"step time {args.step_time} s; signal k of n sent k/n of a step period after a step's logging call "
          "returned; times min / median / max in seconds\n")
    print("| arm | signal | signals | steps logged before the signal | lost | attempts closed with mark + exit | "
          "run parts | signal -> closed run (logger) | scontrol/scancel -> closed run |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for label, figures in results.items():
        name, kind = label.split(" ", 1) if label.startswith("ours") else ("plain wandb", label[len("plain wandb "):])
        print(_row(name, kind, figures))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
