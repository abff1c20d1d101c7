"""Alpha-beta cost model of one ``log_metrics`` call at W ranks (8 per node), per reduction design.

Every number it prints is a MODEL output, not a measurement (docs/performance.md, "Thousands of ranks", puts it beside
what was measured and says what is not). The designs: a = the single ring all_gather the package used before the
two-level pattern (still its pattern on one node); d2 = the two-level reduce-to-primary the pattern follows; "ours" =
the pattern as implemented (node gather, leaders' gather, then the result broadcast in two levels, primary ->
leaders -> nodes, so no group spans every rank), with the frame, aggregate and result sizes of
``sdxl_dist_log.hierarchy``. The other rows are the alternatives the choice was made against.

Sources of the algorithms: torch 2.13 ``ProcessGroupGloo`` (all_gather and all_reduce are gloo rings, 2(W-1) hops for
all_reduce), gloo ``gather.cc`` (flat: the root takes W-1 messages), ``broadcast.cc`` (binomial tree), NCCL 2.20.3
``src/graph/tuning.cc`` (latency constants quoted below). The parameters (``P``) are assumptions bracketed by
published small-message figures (gloo issues #158 and #122: ~220-350 us per inter-host step on 2018 TCP hardware,
39 us on IB verbs) and by the torch launch + completion cost of one collective measured on an H100 (32.6 us).

``--simulate`` runs the real steps of the package in the in-process simulator (``sdxl_dist_log.testing.simulate``)
for W = 8 ... 4,096 and prices the primary's recorded collectives (the critical path: every message reaches it or
leaves from it) with the same parameters, so the formula and the code are checked against each other.

Usage: python benchmarks/scale_model.py [--scenario central|optimistic|pessimistic|all] [--simulate]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

US = 1e-6


@dataclass(frozen=True)
class P:
    """One scenario's parameters (all in microseconds, or microseconds per byte).

    Attributes:
        name: the scenario.
        c: fixed cost of one torch.distributed gloo call on a rank (Python, c10d, worker hand-off, wait);
            20 / 40 / 100 (the NCCL figure through torch at world size 1 is 32.6).
        a_l: a gloo hop between two ranks of one node (loopback TCP + gloo loop/worker wake-ups): 10 / 30 / 150.
        a_n: a gloo hop between nodes (TCP over Ethernet/IPoIB + the same wake-ups + the receiver's "recv ready"
            notification): 25 / 60 / 200.
        b_l: loopback cost per byte: 10 / 5 / 2 GB/s.
        b_n: inter-node cost per byte of one gloo TCP stream: 10 / 2 / 1 GB/s (gloo issue #248: 1.07 GB/s between
            2 hosts on 40 GbE).
        o: CPU per message at a gather root (notification + read + completion): 2 / 5 / 15.
        o_p2p: one Python isend/irecv in a hand-built tree: 8 / 15 / 40.
        c_nccl: torch launch + completion of one NCCL collective + the host copies around it: 40 / 60 / 120.
        p: ranks per node.
    """

    name: str
    c: float
    a_l: float
    a_n: float
    b_l: float
    b_n: float
    o: float
    o_p2p: float
    c_nccl: float
    p: int = 8


SCENARIOS = {
    "optimistic": P("optimistic", c=20, a_l=10, a_n=25, b_l=1 / 10e3, b_n=1 / 10e3, o=2, o_p2p=8, c_nccl=40),
    "central": P("central", c=40, a_l=30, a_n=60, b_l=1 / 5e3, b_n=1 / 2e3, o=5, o_p2p=15, c_nccl=60),
    "pessimistic": P("pessimistic", c=100, a_l=150, a_n=200, b_l=1 / 2e3, b_n=1 / 1e3, o=15, o_p2p=40, c_nccl=120),
}


def frame_floats(values: int) -> int:
    """The package's lockstep frame: 128 float64, doubled until the row fits (collectives.py)."""
    f = 128
    while f < values:
        f *= 2
    return f


def row_bytes(n_keys: int) -> int:
    """Bytes one rank contributes today: 4 call-header floats + frame (3 metric-header floats + N values fit)."""
    return 8 * (4 + frame_floats(n_keys + 3))


def agg_bytes(n_keys: int) -> int:
    """A fixed-size partial-aggregate / result frame: ~32 header floats (checks, counts, verdict) + N values."""
    return 8 * (4 + frame_floats(n_keys + 32))


def ours_bytes(n_keys: int, per_node: int) -> tuple[int, int, int]:
    """The package's frame, aggregate and result bytes for a call of ``n_keys`` mean metrics (hierarchy.py)."""
    from sdxl_dist_log.framing import CALL_HEADER
    from sdxl_dist_log.hierarchy import AGG_HEADER, INITIAL_WIDTH, RESULT_HEADER, STAGE_HEADER
    from sdxl_dist_log.metrics import HEADER_SIZE

    frame = frame_floats(n_keys + HEADER_SIZE)
    return (8 * (CALL_HEADER + frame), 8 * (AGG_HEADER + STAGE_HEADER + frame + per_node * INITIAL_WIDTH),
            8 * (RESULT_HEADER + STAGE_HEADER + frame))


def sum_vec_bytes(n_keys: int) -> int:
    """One SUM all_reduce vector: 13 check floats (3 limbs + 3 squares for call id and fingerprint, error count)
    + N values (means/sums/local); min/max/per_rank keys would add W one-hot slots each (not counted here)."""
    return 8 * (13 + n_keys)


def log2c(x: int) -> int:
    return max(0, math.ceil(math.log2(x))) if x > 1 else 0


def ring_avg(par: P, w: int) -> tuple[float, float]:
    """Mean hop latency and per-byte cost along a rank-order ring with node-major placement."""
    if w <= par.p:
        return par.a_l, par.b_l
    return ((par.p - 1) * par.a_l + par.a_n) / par.p, ((par.p - 1) * par.b_l + par.b_n) / par.p


def bcast_hops(par: P, w: int) -> float:
    """gloo broadcast is binomial over rank order: log2(p) rounds inside a node, log2(W/p) across nodes."""
    if w <= par.p:
        return log2c(w) * par.a_l
    return log2c(par.p) * par.a_l + log2c(w // par.p) * par.a_n


# NCCL 2.20.3 src/graph/tuning.cc constants (us): baseLat Tree/LL 6.8, Ring/LL 6.6; hwLat NVLink Tree/LL .6,
# Ring/LL .6; NET Tree/LL 5.0, Ring/LL 2.7; net overhead 1.0 (Intel) for inter-node rings.
def nccl_allreduce_us(w: int, p: int = 8) -> tuple[float, str]:
    nodes = max(1, w // p)
    ppn = min(w, p)
    tree = 6.8 + 2 * ((ppn - 1) * 0.6 + log2c(nodes) * 5.0)
    if nodes == 1:
        ring = 6.6 + 2 * (w - 1) * 0.6
    else:
        inter = 2 * nodes
        ring = 6.6 + (2 * (w - 1) - inter) * max(0.6, 1.0) + inter * 2.7
    return (tree, "tree/LL") if tree <= ring else (ring, "ring/LL")


def nccl_allgather_us(w: int, p: int = 8) -> float:
    nodes = max(1, w // p)
    if nodes == 1:
        return 6.6 + (w - 1) * 0.6
    return 6.6 + ((w - 1) - (nodes - 1)) * 1.0 + (nodes - 1) * 2.7


NCCL_LL_BYTES_PER_US = 10e3  # assumed ~10 GB/s effective for LL-protocol payload at these sizes


def designs(par: P, w: int, n: int) -> list[dict]:
    f, a, v = row_bytes(n), agg_bytes(n), sum_vec_bytes(n)
    p = min(par.p, w)
    nodes = max(1, w // par.p)
    ab, bb = ring_avg(par, w)
    out = []

    def add(key, name, t, busiest_sent, busiest_recv, other_sent, other_recv, colls, rows_reduced):
        out.append(dict(key=key, name=name, t_us=t, bs=busiest_sent, br=busiest_recv, os=other_sent, orc=other_recv,
                        colls=colls, rows=rows_reduced))

    # a. before: flat gloo ring all_gather of one frame per rank; every rank reduces the W-row matrix
    t = par.c + (w - 1) * (ab + f * bb)
    add("a", "before: one flat gloo all_gather (ring; still ours on one node)", t, (w - 1) * f, (w - 1) * f,
        (w - 1) * f, (w - 1) * f, "1", w)

    # b1. hierarchical all_gather: node gather -> leaders' ring all_gather of p frames -> node broadcast of W frames
    t_local = par.a_l + (p - 1) * max(par.o, f * par.b_l) if p > 1 else 0.0
    t_lead = (nodes - 1) * (par.a_n + p * f * par.b_n) if nodes > 1 else 0.0
    t_bc = log2c(p) * (par.a_l + w * f * par.b_l)
    t = 3 * par.c + t_local + t_lead + t_bc
    add("b1", "hier. all_gather (node gather, leaders all_gather, node bcast)", t,
        (nodes - 1) * p * f + log2c(p) * w * f, (p - 1) * f + (nodes - 1) * p * f, f, w * f, "3 leader / 2", w)

    # b2. hierarchical all_reduce: node gather -> leaders' ring all_reduce (SUM-encoded) -> node broadcast of result
    t_lead = 2 * (nodes - 1) * par.a_n + 2 * v * par.b_n if nodes > 1 else 0.0
    t = 3 * par.c + t_local + t_lead + log2c(p) * (par.a_l + a * par.b_l)
    add("b2", "hier. all_reduce (node gather, leaders all_reduce, node bcast)", t,
        2 * v + log2c(p) * a, (p - 1) * f + 2 * v, f, a, "3 leader / 2", p)

    # c1/c2. flat gloo ring all_reduce: two (SUM + MAX) or one (SUM-only encoding)
    t1 = par.c + 2 * (w - 1) * ab + 2 * v * bb
    add("c1", "gloo all_reduce x2 (SUM + MAX), flat ring", 2 * t1, 4 * v, 4 * v, 4 * v, 4 * v, "2", 1)
    add("c2", "gloo all_reduce x1 (SUM-only encoding), flat ring", t1, 2 * v, 2 * v, 2 * v, 2 * v, "1", 1)

    # c3. one NCCL all_reduce (SUM-only encoding) on a separate communicator, NCCL's own latency model
    lat, _algo = nccl_allreduce_us(w, par.p)
    add("c3", "NCCL all_reduce x1 (SUM-only encoding), NCCL 2.20 model (ring/LL at W=8, tree/LL above)",
        par.c_nccl + lat,
        2 * v, 2 * v, 2 * v, 2 * v, "1 (NCCL)", 1)

    # c4. today's frame on NCCL all_gather (NCCL 2.20 has only ring for all_gather at 8 GPUs/node)
    t = par.c_nccl + nccl_allgather_us(w, par.p) + w * f / NCCL_LL_BYTES_PER_US
    add("c4", "NCCL all_gather of today's frame (ring/LL)", t, (w - 1) * f, (w - 1) * f, (w - 1) * f, (w - 1) * f,
        "1 (NCCL)", w)

    # d1. flat gloo gather to the primary + binomial broadcast of a fixed-size result/verdict frame
    first = par.a_l if w <= par.p else par.a_n
    t = 2 * par.c + first + (w - 1) * max(par.o, f * (par.b_l if w <= par.p else par.b_n)) + bcast_hops(par, w)
    add("d1", "flat gather to primary + bcast result (gloo)", t, log2c(w) * a, (w - 1) * f, f, a, "2", w)

    # d2. two-level: node gather (loopback) -> leaders combine -> leaders gather aggregates to primary -> bcast
    t_lead = par.a_n + (nodes - 1) * max(par.o, a * par.b_n) if nodes > 1 else 0.0
    t_comb = 10 + 0.002 * (p + nodes) * n  # numpy combine of p (leader) and W/p (primary) frames, assumed
    t = (3 if nodes > 1 else 2) * par.c + t_local + t_lead + t_comb + bcast_hops(par, w)
    add("d2", "two-level reduce to primary + bcast result (gloo) [recommended]", t,
        log2c(w) * a, (p - 1) * f + (nodes - 1) * a, f, a, "3 leader / 2", max(p, nodes))

    # ours: d2 with the result broadcast in two levels (primary -> leaders -> nodes) and the package's real sizes
    fo, ao, ro = ours_bytes(n, p)
    t_comb = 10 + 0.002 * (p + nodes) * n
    if nodes == 1:
        t = par.c + (w - 1) * (par.a_l + fo * par.b_l)  # one node: the single all_gather
        add("ours", OURS, t, (w - 1) * fo, (w - 1) * fo, (w - 1) * fo,
            (w - 1) * fo, "1", w)
    else:
        t = (par.c + par.a_l + (p - 1) * max(par.o, fo * par.b_l) if p > 1 else 0.0) \
            + par.c + par.a_n + (nodes - 1) * max(par.o, ao * par.b_n) + t_comb \
            + par.c + log2c(nodes) * (par.a_n + ro * par.b_n) \
            + (par.c + log2c(p) * (par.a_l + ro * par.b_l) if p > 1 else 0.0)
        add("ours", OURS, t,
            log2c(nodes) * ro, (p - 1) * fo + (nodes - 1) * ao, fo, ro, "4 leader / 2", max(p, nodes))

    # e. k-ary tree from gloo isend/irecv (k=8, node-aware), up then down
    depth = 1 + (math.ceil(math.log(nodes, 8) - 1e-9) if nodes > 1 else 0)
    up = (par.a_l + (p - 1) * par.o_p2p) + (depth - 1) * (par.a_n + 7 * par.o_p2p)
    add("e", "8-ary tree of gloo isend/irecv, up + down", 2 * up, 7 * a + a, 7 * f + a, f + a, a,
        f"{2 * 7} p2p ops max", 8)
    return out


def fmt_us(t: float) -> str:
    return f"{t / 1000:,.2f} ms" if t >= 1000 else f"{t:,.0f} us"


def fmt_b(b: float) -> str:
    if b >= 1e6:
        return f"{b / 1e6:,.1f} MB"
    if b >= 1e3:
        return f"{b / 1e3:,.1f} kB"
    return f"{b:,.0f} B"


WORLDS = (8, 64, 256, 1024, 4096)
OURS = "ours, as implemented: one node: the all_gather; else node gather, leaders' gather, bcast to leaders, to nodes"


def latency_table(par: P, n: int) -> str:
    rows = {}
    for w in WORLDS:
        for d in designs(par, w, n):
            rows.setdefault((d["key"], d["name"]), []).append(d)
    head = "| design | " + " | ".join(f"W={w}" for w in WORLDS) + " |\n|---|" + "---:|" * len(WORLDS) + "\n"
    body = ""
    for (key, name), ds in rows.items():
        body += f"| {key}. {name} | " + " | ".join(fmt_us(d["t_us"]) for d in ds) + " |\n"
    return head + body


def bytes_table(par: P, n: int) -> str:
    rows = {}
    for w in WORLDS:
        for d in designs(par, w, n):
            rows.setdefault((d["key"], d["name"]), []).append(d)
    head = ("| design | " + " | ".join(f"W={w}: busiest rank sent/recv; other ranks recv" for w in (64, 1024, 4096))
            + " | collectives per call | rows reduced on busiest rank (W=4096) |\n|---|---|---|---|---|---:|\n")
    body = ""
    for (key, _name), ds in rows.items():
        cells = []
        for d in ds:
            if WORLDS[ds.index(d)] in (64, 1024, 4096):
                cells.append(f"{fmt_b(d['bs'])} / {fmt_b(d['br'])}; {fmt_b(d['orc'])}")
        body += f"| {key}. | " + " | ".join(cells) + f" | {ds[-1]['colls']} | {ds[-1]['rows']:,} |\n"
    return head + body


def sensitivity_table(n: int) -> str:
    keys = ("a", "b1", "c2", "c3", "d1", "d2", "ours", "e")
    head = "| design | " + " | ".join(f"{s} W={w}" for w in (1024, 4096) for s in ("opt.", "central", "pess.")) + " |\n"
    head += "|---|" + "---:|" * 6 + "\n"
    body = ""
    for key in keys:
        cells = []
        for w in (1024, 4096):
            for name in ("optimistic", "central", "pessimistic"):
                d = next(d for d in designs(SCENARIOS[name], w, n) if d["key"] == key)
                cells.append(fmt_us(d["t_us"]))
        body += f"| {key}. | " + " | ".join(cells) + " |\n"
    return head + body


def simulate(n: int, worlds=WORLDS, per_node: int = 8) -> list[dict]:
    """Run the package's steps for W simulated ranks; per W the primary's and a plain rank's recorded collectives."""
    import numpy as np

    from sdxl_dist_log.framing import CallInfo, build_frame, grown_frame
    from sdxl_dist_log.hierarchy import INITIAL_WIDTH, call_steps
    from sdxl_dist_log.metric_stage import MetricStage
    from sdxl_dist_log.metrics import MetricPlan, pack_row, resolve_reduce
    from sdxl_dist_log.testing.simulate import SimulatedJob
    from sdxl_dist_log.topology import Layout

    keys = tuple(f"k{i:04d}" for i in range(n))
    plan = MetricPlan(keys, resolve_reduce(keys, "mean"))
    out = []
    for w in worlds:
        job = SimulatedJob(Layout.regular(w, min(per_node, w)))
        row = pack_row(plan, np.ones(n))
        frame = grown_frame(len(row), 128)
        call = CallInfo("log_metrics", 1)
        job.run({r: call_steps(job.topology(r), build_frame(row, sequence=1, call=call, frame=frame),
                               MetricStage(plan, w), INITIAL_WIDTH) for r in range(w)})
        out.append(dict(w=w, primary=job.records[0], plain=job.records[w - 1]))
    return out


def priced(par: P, record, n: int, nodes: int, p: int) -> float:
    """The modeled time of the primary's recorded collectives (its path is the critical one)."""
    t = 10 + 0.002 * (p + nodes) * n if nodes > 1 else 0.0  # the combine steps, as in designs()
    for c in record.collectives:
        alpha, beta = (par.a_l, par.b_l) if c.level == "node" else (par.a_n, par.b_n)
        if c.op == "gather":
            t += par.c + alpha + c.messages_received * max(par.o, c.sent * beta)
        elif c.op == "broadcast":
            t += par.c + c.rounds * (alpha + c.sent * beta)
        else:  # the ring all_gather of one node
            t += par.c + c.rounds * (alpha + c.sent * beta)
    return t


def simulated_table(n: int) -> str:
    head = ("| W | collectives: primary / plain rank | messages received by the primary | bytes received: primary / "
            "plain rank | model from the trace, central (opt. / pess.) | model formula, central |\n"
            "|---:|---|---:|---|---|---:|\n")
    body = ""
    for sim in simulate(n):
        w = sim["w"]
        p = min(8, w)
        nodes = max(1, w // 8)
        prim, plain = sim["primary"], sim["plain"]
        times = {name: priced(par, prim, n, nodes, p) for name, par in SCENARIOS.items()}
        formula = next(d for d in designs(SCENARIOS["central"], w, n) if d["key"] == "ours")["t_us"]
        body += (f"| {w:,} | {len(prim.collectives)} / {len(plain.collectives)} | {prim.messages_received:,} | "
                 f"{fmt_b(prim.bytes_received)} / {fmt_b(plain.bytes_received)} | {fmt_us(times['central'])} "
                 f"({fmt_us(times['optimistic'])} / {fmt_us(times['pessimistic'])}) | {fmt_us(formula)} |\n")
    return head + body


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="all", choices=["all", *SCENARIOS])
    ap.add_argument("--simulate", action="store_true",
                    help="price the package's simulated collectives (W = 8 ... 4,096, 8 ranks per node)")
    args = ap.parse_args()
    if args.simulate:
        for n in (64, 512):
            print(f"\n## the package's steps, simulated, N = {n} mean metrics, 8 ranks per node\n")
            print(simulated_table(n))
        return
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for name in names:
        par = SCENARIOS[name]
        print(f"\n## scenario {name}: {par}\n")
        for n in (64, 512):
            print(f"### N = {n} metrics (today's frame {row_bytes(n):,} B per rank; aggregate/result frame "
                  f"{agg_bytes(n):,} B; SUM vector {sum_vec_bytes(n):,} B)\n")
            print(latency_table(par, n))
            if name == "central":
                print(bytes_table(par, n))
    if args.scenario == "all":
        for n in (64, 512):
            print(f"\n## sensitivity, N = {n}: optimistic / central / pessimistic parameters\n")
            print(sensitivity_table(n))


if __name__ == "__main__":
    main()
