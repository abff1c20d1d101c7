"""Counts on one machine, for the pattern that must hold at thousands of ranks: per rank role, the collectives one
``log_metrics`` call makes (op, group size, bytes), measured in real gloo processes on simulated nodes (the launch's
GROUP_RANK / LOCAL_RANK / LOCAL_WORLD_SIZE), and the TCP connections the logger opened in each process.

Counts, not times: exact on any machine. For W beyond one machine, ``scale_model.py --simulate`` runs the same steps
in one process and prices them.

Run:      python benchmarks/bench_scale.py                       (--layouts 2x1 4x2 8x2 8x4 16x1 16x2 16x4 16x8)
Options:  --keys 64
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_metrics import machine_line  # noqa: E402

from sdxl_dist_log.launch.local import run_ranks, values_or_raise  # noqa: E402


def _child(keys: int, rank: int) -> dict[str, Any]:
    import psutil

    from sdxl_dist_log import WandbConfig, WandbLogger
    from sdxl_dist_log.testing.probe import CollectiveProbe

    def established() -> int:
        return sum(1 for c in psutil.Process().net_connections(kind="tcp") if c.status == "ESTABLISHED")

    before = established()
    wb = WandbLogger(WandbConfig(project="bench", mode="disabled", log_system_metrics=False, collective_timeout=300.0))
    after_create = established() - before
    metrics = {f"k{i:03d}": float(i + rank) for i in range(keys)}
    wb.log_metrics(metrics, step=0)
    with CollectiveProbe() as probe:
        wb.log_metrics(metrics, step=1)
    after_calls = established() - before
    topology = wb._collectives.topology
    role = "primary" if topology.is_primary else "leader" if topology.is_leader else "other"
    wb.finish()
    return dict(role=role, calls=[(c.op, c.group_size, c.sent, c.received) for c in probe.calls],
                created=after_create, opened=after_calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", default=["2x1", "4x2", "8x2", "8x4", "16x1", "16x2", "16x4", "16x8"],
                        help="WORLDxRANKS_PER_NODE")
    parser.add_argument("--keys", type=int, default=64)
    args = parser.parse_args(argv)
    import functools

    print(f"bench_scale: {machine_line()}")
    print(f"one log_metrics call of {args.keys} mean metrics after a first call; per rank role: the collectives "
          "(op, group size, bytes sent, bytes received), and the TCP connections the logger opened "
          "(after building it / after two calls); a full mesh would be W-1")
    for layout in args.layouts:
        world, per_node = (int(x) for x in layout.split("x"))

        def rank_env(rank: int, per_node: int = per_node) -> dict[str, str]:
            return {"GROUP_RANK": str(rank // per_node), "LOCAL_RANK": str(rank % per_node),
                    "LOCAL_WORLD_SIZE": str(per_node)}

        t0 = time.perf_counter()
        results = values_or_raise(run_ranks(functools.partial(_child, args.keys), world, rank_env=rank_env,
                                            timeout=900, pg_timeout=300.0))
        print(f"\n== W={world}, {per_node} rank(s) per node, {math.ceil(world / per_node)} node(s)  "
              f"({time.perf_counter() - t0:.1f} s wall)")
        by_role: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in results:
            by_role[r["role"]].append(r)
        for role in ("primary", "leader", "other"):
            group = by_role.get(role)
            if not group:
                continue
            patterns = {tuple(r["calls"]) for r in group}
            pattern = "; ".join(f"{op}({size}) {sent:,}/{received:,} B" for op, size, sent, received in
                                sorted(patterns)[0]) or "none"
            same = "" if len(patterns) == 1 else f"  ({len(patterns)} different patterns!)"
            conns = sorted({(r["created"], r["opened"]) for r in group})
            print(f"  {role:<8} x{len(group):<3} {pattern}{same}")
            print(f"  {'':<8}      connections opened (built / after calls): {conns}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
