"""How stable is a measured speedup on this machine? The noise floor behind every budget and prediction figure.

    python benchmarks/bench_noise.py                    # demo model at two widths, 12 repeats, ~2 minutes
    python benchmarks/bench_noise.py --repeats 30 --gap 5

The closed loop accepts a plan on one interleaved pruned/dense measurement (two since the confirmation
step) and the report re-measures it minutes later. This script times the same fixed pair (the MNIST-1D
demo model, dense vs uniformly narrowed, random weights: latency does not depend on their values)
`--repeats` times with MEASURING.md's protocol, `--gap` seconds apart, and prints the spread of the
ratio of medians. If the ratio moves by x% here, no plan can be placed in a budget band narrower than
that, and no prediction can be checked more tightly than that.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import table


def main() -> None:
    from hwprune.examples import Mnist1dCNN
    from hwprune.hardware.targets import get_target

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", nargs="+", type=int, default=[47, 103], help="uniform widths of the narrowed model")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--gap", type=float, default=2.0, help="seconds of idle between repeats")
    ap.add_argument("--target", default="cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    target = get_target(a.target)
    x = torch.randn(a.batch_size, 1, 40)
    dense = Mnist1dCNN().eval()
    narrow = {w: Mnist1dCNN(width=w, hidden=w).eval() for w in a.widths}
    ratios: dict[int, list[float]] = {w: [] for w in a.widths}
    dense_ms: list[float] = []
    for i in range(a.repeats):
        for w, m in narrow.items():
            td, tp = target.time_models([dense, m], x)
            ratios[w].append(tp.median / td.median)
            dense_ms.append(td.median * 1e3)
        print(f"repeat {i + 1}/{a.repeats}: " + ", ".join(f"w{w} {r[-1]:.4f}" for w, r in ratios.items()), flush=True)
        time.sleep(a.gap)
    rows = []
    for w, r in ratios.items():
        mean = statistics.fmean(r)
        rows.append(
            [
                f"256 -> {w}",
                f"{statistics.median(r):.4f}",
                f"{100 * statistics.pstdev(r) / mean:.1f}%",
                f"{min(r):.4f}",
                f"{max(r):.4f}",
                f"{max(r) / min(r):.2f}",
            ]
        )
    fp = target.fingerprint()
    print(
        f"\nMNIST-1D demo model, batch {a.batch_size}, {a.target}; {a.repeats} interleaved measurements "
        f"{a.gap:g} s apart; {fp.get('cpu')}, {fp.get('threads')} threads; dense latency "
        f"{min(dense_ms):.2f}-{max(dense_ms):.2f} ms over the run\n"
    )
    headers = ["width", "median pruned/dense", "coefficient of variation", "min", "max", "max / min"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
