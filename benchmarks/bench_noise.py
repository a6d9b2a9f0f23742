"""How stable is a measured speedup on this machine, and do hwprune's intervals say so honestly?

    python benchmarks/bench_noise.py                    # interval coverage: demo model, two widths, ~5 minutes
    python benchmarks/bench_noise.py --measurements 40 --gap 1
    python benchmarks/bench_noise.py --spread           # the older table: spread of 12 ratios of medians
    python benchmarks/bench_noise.py --table-entries --target cpu-ort   # latency-table entries instead

Default (coverage): the same fixed pairs as before (the MNIST-1D demo model, dense vs uniformly narrowed,
random weights: latency does not depend on their values) are measured `--measurements` times each, `--gap`
seconds apart, with the pipeline's whole-model protocol (adaptive: until the 95% interval is within +-2% or
4 s). For each of the first half of the measurements, and each estimator of the per-round ratios (median,
20% trimmed mean, minimum), the question is whether its reported interval covers the median of the *next*
`--later` measurements' estimates: the figure a user would get by re-measuring. Printed per pair and
estimator: the estimate, the interval's half-width, its coverage, and the bias of one measurement against
the later median.

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
from _common import save, table


def main() -> None:
    from hwprune.hardware.targets import get_target
    from hwprune.zoo.examples import Mnist1dCNN

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", nargs="+", type=int, default=[47, 103], help="uniform widths of the narrowed model")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=12, help="with --spread / --table-entries: repeats")
    ap.add_argument("--measurements", type=int, default=40, help="coverage: measurements of each pair")
    ap.add_argument("--later", type=int, default=20, help="coverage: later measurements each interval must cover")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds of idle between measurements")
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--spread", action="store_true", help="the spread of ratios of medians (the older table)")
    ap.add_argument("--table-entries", action="store_true", help="time latency-table entries instead of models")
    ap.add_argument("--layers", type=int, default=12, help="with --table-entries: how many layers")
    ap.add_argument("--json", default=None, help="also write the raw figures here")
    a = ap.parse_args()
    torch.manual_seed(0)
    target = get_target(a.target)
    if a.table_entries:
        table_entries(target, a)
        return
    x = torch.randn(a.batch_size, 1, 40)
    dense = Mnist1dCNN().eval()
    narrow = {w: Mnist1dCNN(width=w, hidden=w).eval() for w in a.widths}
    if not a.spread:
        coverage(target, dense, narrow, x, a)
        return
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


def coverage(target, dense, narrow: dict, x, a) -> None:
    """Each pair measured `a.measurements` times (pairs alternating); per estimator, does measurement i's
    interval cover the median of measurements i+1 .. i+later?"""
    from hwprune.hardware.timing import ESTIMATORS, estimate, round_ratios

    runs: dict[int, list[dict]] = {w: [] for w in narrow}
    t0 = time.perf_counter()
    for i in range(a.measurements):
        for w, m in narrow.items():
            td, tp = target.time_models([dense, m], x)
            r = round_ratios(tp, td)
            runs[w].append(
                {
                    "rounds": len(r),
                    "stopped": td.stopped,
                    "dense_ms": td.median * 1e3,
                    **{e: estimate(r, e).to_dict() for e in ESTIMATORS},
                }
            )
        done = time.perf_counter() - t0
        eta = done / (i + 1) * (a.measurements - i - 1)
        print(
            f"measurement {i + 1}/{a.measurements} ({done:.0f} s, ETA {eta:.0f} s): "
            + ", ".join(f"w{w} {runs[w][-1]['median']['value']:.4f} ({runs[w][-1]['rounds']} rounds)" for w in narrow),
            flush=True,
        )
        time.sleep(a.gap)
    starts = a.measurements - a.later
    rows = []
    for w, ms in runs.items():
        for e in ESTIMATORS:
            hits, bias = 0, []
            for i in range(starts):
                ref = statistics.median(m[e]["value"] for m in ms[i + 1 : i + 1 + a.later])
                hits += ms[i][e]["low"] <= ref <= ms[i][e]["high"]
                bias.append(ms[i][e]["value"] / ref - 1)
            hw = [(m[e]["high"] - m[e]["low"]) / 2 / m[e]["value"] for m in ms]
            rows.append(
                [
                    f"256 -> {w}",
                    e,
                    f"{statistics.median(m[e]['value'] for m in ms):.4f}",
                    f"±{100 * statistics.median(hw):.1f}% ({100 * min(hw):.1f}-{100 * max(hw):.1f}%)",
                    f"{hits}/{starts} ({100 * hits / starts:.0f}%)",
                    f"{100 * statistics.median(bias):+.1f}%",
                ]
            )
    dense_ms = [m["dense_ms"] for ms in runs.values() for m in ms]
    rounds = [m["rounds"] for ms in runs.values() for m in ms]
    stopped = [m["stopped"] for ms in runs.values() for m in ms]
    fp = target.fingerprint()
    print(
        f"\nMNIST-1D demo model, batch {a.batch_size}, {a.target}; {a.measurements} interleaved measurements per "
        f"pair, {a.gap:g} s apart, each interval checked against the median of the next {a.later}; "
        f"{fp.get('cpu')}, {fp.get('threads')} threads; dense latency {min(dense_ms):.2f}-{max(dense_ms):.2f} ms "
        f"over the run; rounds per measurement {min(rounds)}-{max(rounds)} (median "
        f"{statistics.median(rounds):.0f}); stopped on tolerance {stopped.count('tolerance')}, "
        f"time cap {stopped.count('time cap')} of {len(stopped)}\n"
    )
    headers = ["width", "estimator", "median estimate", "95% CI half-width (range)", "covers later median", "bias"]
    print(table(headers, rows))
    if a.json:
        save(a.json, {"fingerprint": fp, "runs": {str(w): ms for w, ms in runs.items()}})


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
        for la, t, r in zip(layers, alone, relative, strict=False)
    ]
    headers = ["layer", "channels", "median us", "alone: CV | max/min", "/ reference: CV | max/min"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
