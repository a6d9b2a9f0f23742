"""hw vs uniform (vs global) allocators on the demo task (MNIST-1D, batch 64), at the same measured budget.

    python benchmarks/bench_allocators.py                          # budgets 0.3, 0.15; seeds 0 1 2
    python benchmarks/bench_allocators.py --budgets 0.3 --seeds 0 --finetune-epochs 2

For every (budget, allocator, seed): the measured latency as a fraction of dense, the test accuracy
one-shot (no fine-tuning) and after the same fine-tuning with distillation. The dense model is the
demo's (trained once, seed 0); the seed changes calibration batches and fine-tuning order.
"""

from __future__ import annotations

import argparse
from statistics import mean

from _common import run, save, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", nargs="+", default=["0.3", "0.15"])
    ap.add_argument("--allocators", nargs="+", default=["hw", "uniform"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--criterion", default="taylor")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows, summary, reports = [], [], []
    for budget in a.budgets:
        for alloc in a.allocators:
            per_seed = []
            for seed in a.seeds:
                r = run(
                    dict(
                        model="example:mnist1d",
                        data="mnist1d",
                        batch_size=64,
                        budget=budget,
                        allocator=alloc,
                        criterion=a.criterion,
                        finetune_epochs=a.finetune_epochs,
                        seed=seed,
                    )
                )
                reports.append(r)
                per_seed.append(r)
                rows.append(
                    [
                        budget,
                        alloc,
                        seed,
                        f"{r['latency_ratio']:.3f}",
                        f"{r['budget']['used']:.0%}",
                        f"{100 * r['pruned']['accuracy_oneshot']:.2f}",
                        f"{100 * r['pruned']['accuracy']:.2f}",
                        f"{r['macs_ratio']:.2f}",
                        " ".join(str(g["width"]) for g in r["groups"]),
                    ]
                )
                print(rows[-1], flush=True)
            summary.append(
                [
                    budget,
                    alloc,
                    f"{mean(r['latency_ratio'] for r in per_seed):.3f}",
                    f"{100 * mean(r['pruned']['accuracy_oneshot'] for r in per_seed):.2f}",
                    f"{100 * mean(r['pruned']['accuracy'] for r in per_seed):.2f}",
                ]
            )
    dense_acc = reports[0]["dense"]["accuracy"]
    fp = reports[0]["fingerprint"]
    print(
        f"\nMNIST-1D demo model, dense accuracy {100 * dense_acc:.2f}%, batch 64, criterion {a.criterion}, "
        f"fine-tuning {a.finetune_epochs} epochs (KD); {fp['cpu']}, {fp['threads']} threads, torch {fp['torch']}\n"
    )
    print(
        table(
            [
                "budget",
                "allocator",
                "seed",
                "pruned/dense latency",
                "of budget",
                "acc one-shot %",
                f"acc after {a.finetune_epochs} ep %",
                "MACs ratio",
                "widths",
            ],
            rows,
        )
    )
    print("\nMean of seeds:\n")
    print(table(["budget", "allocator", "pruned/dense latency", "acc one-shot %", "acc fine-tuned %"], summary))
    save(a.json, reports)


if __name__ == "__main__":
    main()
