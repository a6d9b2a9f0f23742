"""Prune torchvision models to a latency budget on this CPU; print measured vs budget and predicted vs measured.

    python benchmarks/bench_torchvision.py                       # resnet18, resnet50, mobilenet_v2 x batch 1, 8
    python benchmarks/bench_torchvision.py --models resnet18 --batches 1 --budget 0.5

Random weights (no downloads): latency does not depend on the weights' values. Run it twice to see
the latency table cache at work (the `table s` column).
"""

from __future__ import annotations

import argparse

from _common import run, save, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--budget", default="0.5")
    ap.add_argument("--allocator", default="hw")
    ap.add_argument("--json", default=None, help="also write every report to this file")
    a = ap.parse_args()
    rows, reports = [], []
    for name in a.models:
        for b in a.batches:
            r = run(dict(model=f"torchvision:{name}", batch_size=b, budget=a.budget, allocator=a.allocator))
            reports.append(r)
            d, p = r["dense"]["latency"], r["pruned"]["latency"]
            rows.append(
                [
                    name,
                    b,
                    f"{d['median_ms']:.2f} ({d['iqr_ms']:.2f})",
                    f"{p['median_ms']:.2f} ({p['iqr_ms']:.2f})",
                    f"{r['latency_ratio']:.3f}",
                    "yes" if r["budget"]["met"] else "NO",
                    f"{r['predicted_latency_ms']:.2f}",
                    f"{r['measured_latency_ms']:.2f}",
                    f"{100 * r['prediction_error']:+.1f}%",
                    f"{r['macs_ratio']:.2f}",
                    len(r["loop"]),
                    f"{r['latency_table']['entries_measured']}/{r['latency_table']['cache_hits']}",
                    f"{r['latency_table']['seconds']:.0f}",
                    f"{r['wall_s']:.0f}",
                ]
            )
            print(rows[-1], flush=True)
    fp = reports[0]["fingerprint"]
    print(
        f"\nbudget {a.budget} of dense latency, allocator {a.allocator}; {fp['cpu']}, {fp['threads']} threads, "
        f"torch {fp['torch']}, {fp['dtype']}\n"
    )
    print(
        table(
            [
                "model",
                "batch",
                "dense ms (IQR)",
                "pruned ms (IQR)",
                "pruned/dense",
                "met",
                "predicted ms",
                "measured ms",
                "pred. error",
                "MACs ratio",
                "loop iters",
                "table new/cached",
                "table s",
                "total s",
            ],
            rows,
        )
    )
    save(a.json, reports)


if __name__ == "__main__":
    main()
