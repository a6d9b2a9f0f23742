"""hw vs uniform (vs global) allocators on the demo task (MNIST-1D, batch 64), at the same measured budget.

    python benchmarks/bench_allocators.py                          # budgets 0.3, 0.15; seeds 0 1 2
    python benchmarks/bench_allocators.py --budgets 0.3 --seeds 0 --finetune-epochs 2

For every (budget, allocator, seed), two runs: one-shot (no fine-tuning; `hw` then plans without a trust
region) and fine-tuned (the same fine-tuning with distillation for both allocators; `hw` plans within its
trust region around the uniform plan). Each row gives the measured latency as a fraction of dense, the share
of the budget used and the test accuracy. The dense model is the demo's (trained once, seed 0); the seed
changes calibration batches and fine-tuning order.
"""

from __future__ import annotations

import argparse
from statistics import mean

from _common import run, save, table

from hwprune.core.errors import HwpruneError


def _row(budget: str, alloc: str, mode: str, seed: int, r: dict) -> list:
    return [
        budget,
        alloc,
        mode,
        seed,
        f"{r['latency_ratio']:.3f}",
        f"{r['budget']['used']:.0%}",
        f"{100 * r['pruned']['accuracy']:.2f}",
        f"{r['macs_ratio']:.2f}",
        " ".join(str(g["width"]) for g in r["groups"]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", nargs="+", default=["0.3", "0.15"])
    ap.add_argument("--allocators", nargs="+", default=["hw", "uniform"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=["one-shot", "fine-tuned"], choices=["one-shot", "fine-tuned"])
    ap.add_argument("--criterion", default="taylor")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    epochs = {"one-shot": 0, "fine-tuned": a.finetune_epochs}
    rows, summary, reports = [], [], []
    for budget in a.budgets:
        for mode in a.modes:
            for alloc in a.allocators:
                per_seed = []
                for seed in a.seeds:
                    cfg = dict(
                        model="example:mnist1d",
                        data="mnist1d",
                        batch_size=64,
                        budget=budget,
                        allocator=alloc,
                        criterion=a.criterion,
                        finetune_epochs=epochs[mode],
                        seed=seed,
                    )
                    try:
                        r = run(cfg)
                    except HwpruneError as e:  # a failed run is a row of the table, not the end of the benchmark
                        rows.append([budget, alloc, mode, seed, f"failed: {e}", "", "", "", ""])
                        print(rows[-1], flush=True)
                        continue
                    r["mode"] = mode
                    reports.append(r)
                    per_seed.append(r)
                    rows.append(_row(budget, alloc, mode, seed, r))
                    print(rows[-1], flush=True)
                if per_seed:
                    summary.append(
                        [
                            budget,
                            f"{alloc} ({len(per_seed)} seeds)" if len(per_seed) < len(a.seeds) else alloc,
                            mode,
                            f"{mean(r['latency_ratio'] for r in per_seed):.3f}",
                            f"{mean(r['budget']['used'] for r in per_seed):.0%}",
                            f"{100 * mean(r['pruned']['accuracy'] for r in per_seed):.2f}",
                        ]
                    )
    dense_acc = reports[0]["dense"]["accuracy"]
    fp = reports[0]["fingerprint"]
    print(
        f"\nMNIST-1D demo model, dense accuracy {100 * dense_acc:.2f}%, batch 64, criterion {a.criterion}; "
        f"one-shot = a run with no fine-tuning (its own plan), fine-tuned = {a.finetune_epochs} epochs of KD; "
        f"{fp['cpu']}, {fp['threads']} threads, torch {fp['torch']}\n"
    )
    headers = ["budget", "allocator", "mode", "seed", "pruned/dense latency", "of budget", "accuracy %"]
    print(table(headers + ["MACs ratio", "widths"], rows))
    print("\nMean of seeds:\n")
    print(table(["budget", "allocator", "mode", "pruned/dense latency", "of budget", "accuracy %"], summary))
    save(a.json, reports)


if __name__ == "__main__":
    main()
