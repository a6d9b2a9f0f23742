"""How stable is a measured speedup on this machine? The noise floor behind every budget and prediction figure.

    python benchmarks/bench_noise.py                    # demo model at two widths, 12 repeats, ~2 minutes
    python benchmarks/bench_noise.py --repeats 30 --gap 5
    python benchmarks/bench_noise.py --table-entries --target cpu-ort   # latency-table entries instead

The closed loop accepts a plan on one interleaved pruned/dense measurement (two since the confirmation
step) and the report re-measures it minutes later. This script times the same fixed pair (the MNIST-1D
demo model, dense vs uniformly narrowed, random weights: latency does not depend on their values)
`--repeats` times with MEASURING.md's protocol, `--gap` seconds apart, and prints the spread of the
ratio of medians. If the ratio moves by x% here, no plan can be placed in a budget band narrower than
that, and no prediction can be checked more tightly than that.

`--table-entries`: the same question for the latency table. The first layers of torchvision's
mobilenet_v3_small (batch 8) are timed as the table times an entry, `--repeats` times each, alone and
interleaved with a fixed reference conv (their ratio: the machine's speed at that moment cancels, if it
slows both alike). Every prediction is a sum of such entries, measured once each when the table was built.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import table


def main() -> None:
    from hwprune.hardware.targets import get_target
    from hwprune.zoo.examples import Mnist1dCNN

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", nargs="+", type=int, default=[47, 103], help="uniform widths of the narrowed model")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--gap", type=float, default=2.0, help="seconds of idle between repeats")
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--table-entries", action="store_true", help="time latency-table entries instead of models")
    ap.add_argument("--layers", type=int, default=12, help="with --table-entries: how many layers")
    a = ap.parse_args()
    torch.manual_seed(0)
    target = get_target(a.target)
    if a.table_entries:
        table_entries(target, a)
        return
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


def _spread(xs: list[float]) -> str:
    return f"{100 * statistics.pstdev(xs) / statistics.fmean(xs):.1f}% | {max(xs) / min(xs):.2f}"


def table_entries(target, a) -> None:
    """Each of the first `a.layers` layers of mobilenet_v3_small (batch 8, dense widths) timed `a.repeats`
    times by the table's protocol, alone and as a ratio to an interleaved reference conv."""
    import torchvision

    from hwprune.groups.analysis import analyze
    from hwprune.hardware.timing import time_interleaved

    model, x = torchvision.models.mobilenet_v3_small().eval(), torch.randn(8, 3, 224, 224)
    layers = analyze(model, x).layers[: a.layers]
    built = [la.build(la.in_channels, la.out_channels) for la in layers]
    ref_module, ref_x = torch.nn.Conv2d(32, 32, 3, padding=1).eval(), torch.randn(1, 32, 56, 56)
    ref = target.runner(ref_module, ref_x)
    fns = [target.runner(m, xi) for m, xi in built]
    alone: list[list[float]] = [[] for _ in layers]
    relative: list[list[float]] = [[] for _ in layers]
    refs: list[float] = []
    for i in range(a.repeats):
        for j, fn in enumerate(fns):
            alone[j].append(time_interleaved([fn], target.table_protocol)[0].median)
            t, r = time_interleaved([fn, ref], target.table_protocol)
            relative[j].append(t.median / r.median)
            refs.append(r.median)
        print(f"repeat {i + 1}/{a.repeats}", flush=True)
        time.sleep(a.gap)
    fp = target.fingerprint()
    print(
        f"\nmobilenet_v3_small, batch 8, {a.target}; each entry timed {a.repeats} times, {a.gap:g} s between "
        f"rounds; {fp.get('cpu')}, {fp.get('threads')} threads; reference conv {1e6 * min(refs):.0f}-"
        f"{1e6 * max(refs):.0f} us over the run\n"
    )
    rows = [
        [la.name, f"{la.in_channels} -> {la.out_channels}", f"{1e6 * statistics.median(t):.0f}", _spread(t), _spread(r)]
        for la, t, r in zip(layers, alone, relative)
    ]
    headers = ["layer", "channels", "median us", "alone: CV | max/min", "/ reference: CV | max/min"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
