"""One model, three targets, one relative budget: three different plans, and where each target's staircases fall.

    python benchmarks/bench_targets.py                                    # demo CNN, cpu vs Jetson vs FPGA DPU
    python benchmarks/bench_targets.py --targets cpu sim:rpi5 sim:hailo8 --budget latency=0.4

Each target prunes the same dense model (the demo's trained MNIST-1D CNN at batch 64, or `--model`) to the
same fraction of *its own* dense latency, with the `hw` allocator valuing kept L1 importance (no data, so
the three runs differ only by target). The table puts the per-group widths side by side. "Why": for each
group, its latency curve on each target is read from that target's table (other groups dense) and the step
edges are listed: widths where one more channel step costs > 5% more than the previous step (the tile
boundaries of the simulated accelerators, the SIMD/blocking edges of the CPU). A width just at or below an
edge buys the most channels per second; the allocator lands there.
Writes benchmarks/results/targets.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import table  # noqa: E402

#: A step edge: the next candidate width costs this much more than the average step before it.
EDGE_JUMP = 1.05


def edges(xs: list[int], ys: list[float]) -> list[int]:
    """Widths after which latency jumps (x_i where y_{i+1} - y_i > EDGE_JUMP x the mean step)."""
    d = np.diff(np.asarray(ys))
    mean = max(float(np.mean(np.abs(d))), 1e-15)
    return [xs[i] for i in range(len(d)) if d[i] > EDGE_JUMP * mean and d[i] > 0.02 * max(ys)]


def main() -> None:
    from hwprune.cli.run import prune_spec
    from hwprune.cost.curves import Profiler
    from hwprune.cost.model import CostModel
    from hwprune.groups.analysis import analyze
    from hwprune.hardware.table import LatencyCache
    from hwprune.hardware.targets import get_target
    from hwprune.pipeline.config import PruneConfig
    from hwprune.zoo.specs import resolve

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="example:mnist1d")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--targets", nargs="+", default=["cpu", "sim:jetson-orin-nano", "sim:zcu102-dpu"])
    ap.add_argument("--budget", default="latency=0.5")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "targets.md"))
    a = ap.parse_args()

    reports, why, share = {}, {}, {}
    for t in a.targets:
        cfg = PruneConfig.from_dict({"budget": a.budget, "target": t, "criterion": "l1"})
        r = prune_spec(a.model, batch_size=a.batch_size, config=cfg, progress=False).report.to_dict()
        reports[t] = r
        print(
            f"{t}: pruned/dense {r['latency_ratio']:.3f}, budget {'met' if r['budget']['met'] else 'NOT met'}",
            flush=True,
        )
        # The staircase of every group on this target, from its (cached) table.
        resolved = resolve(a.model, a.batch_size, None, False)
        analysis = analyze(resolved.model, resolved.example_inputs, cfg.loop.min_keep)
        target = get_target(t)
        cost = CostModel(analysis, Profiler(target, LatencyCache(cfg.target.cache), progress=False).build(analysis))
        dense = cost.dense_widths()
        why[t], share[t] = {}, {}
        full = cost.layer_sum(dense)
        for g in analysis.groups:
            ys = [cost.layer_sum({**dense, g.id: w}) for w in g.candidates]
            why[t][g.id] = edges(g.candidates, ys)
            share[t][g.id] = (ys[-1] - ys[0]) / full  # latency this group's width controls, dense model

    groups = [g["id"] for g in next(iter(reports.values()))["groups"]]
    sizes = {g["id"]: g["size"] for g in next(iter(reports.values()))["groups"]}
    rows = []
    for gid in groups:
        row = [f"`{gid}`", sizes[gid]]
        for t in a.targets:
            w = {g["id"]: g["width"] for g in reports[t]["groups"]}[gid]
            e = why[t][gid]
            near = [x for x in e if x >= w]
            row.append(f"**{w}**" + (f" (edge at {near[0]})" if near else ""))
        for t in a.targets:
            row.append(f"{100 * share[t][gid]:.0f}%")
        for t in a.targets:
            row.append(", ".join(str(x) for x in why[t][gid][:4]) or "smooth")
        rows.append(row)
    head = (
        ["group", "dense"]
        + [f"width on {t}" for t in a.targets]
        + [f"latency it controls on {t}" for t in a.targets]
        + [f"edges on {t}" for t in a.targets]
    )
    summary = [
        [
            t,
            f"{r['dense']['latency']['median_ms']:.3f}",
            f"{r['pruned']['latency']['median_ms']:.3f}",
            f"{r['latency_ratio']:.3f}",
            "yes" if r["budget"]["met"] else "NO",
            f"{r['predicted_latency_ms']:.3f}",
            f"{r['measured_latency_ms']:.3f}",
            f"{100 * r['prediction_error']:+.1f}%",
        ]
        for t, r in reports.items()
    ]
    distinct = len({tuple(g["width"] for g in r["groups"]) for r in reports.values()})
    text = (
        f"# One model, {len(a.targets)} targets, budget {a.budget}\n\n"
        f"`{a.model}` at batch {a.batch_size}, criterion l1, allocator hw; each target's budget is relative to its "
        f"own dense latency. {distinct} distinct plans from {len(a.targets)} targets. Simulated targets are "
        "the analytical models of `hwprune.hardware.sim` (deterministic); `cpu` is measured on this machine "
        f"({reports.get('cpu', next(iter(reports.values())))['fingerprint'].get('cpu')}).\n\n"
        "Command: `python benchmarks/bench_targets.py "
        + " ".join(sys.argv[1:])
        + "`\n\n"
        + table(
            ["target", "dense ms", "pruned ms", "pruned/dense", "met", "predicted ms", "measured ms", "error"], summary
        )
        + "\n\nPer-group widths (and the first step edge at or above the chosen width); the share of the dense "
        "model's layer latency that the group's width controls on each target (dense minus the group at its "
        "narrowest, others dense): the allocator cuts the groups that are expensive *on that target*; then each "
        "target's first step edges for the group (widths after which the next channel step costs > 5% more than "
        "the average step):\n\n" + table(head, rows) + "\n"
    )
    print("\n" + text)
    Path(a.out).write_text(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
