"""Does the closed loop land in its budget, as an independent measurement minutes later sees it?

    python benchmarks/bench_loop.py                                   # budgets 0.5 0.3 0.15, seeds 0 1 2
    python benchmarks/bench_loop.py --budgets 0.15 --seeds 0 --json /tmp/loop.json

The demo task (the trained MNIST-1D CNN, batch 64, `cpu`) is pruned to each latency budget with each seed,
without fine-tuning (latency does not depend on the weights) but with the trust region fine-tuning would use
(`--trust 0.75`), so the plans are the demo's kind. After every run has finished, each pruned model is
measured again against the dense model, interleaved, with the final protocol: minutes after its own loop
accepted it. A run passes when that re-measured median is at most 1.05x its budget and at least 0.85x.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import save, table

from hwprune.cli.run import prune_spec
from hwprune.core.errors import HwpruneError
from hwprune.hardware.targets import get_target
from hwprune.hardware.timing import ratio_estimate
from hwprune.pipeline.config import PruneConfig
from hwprune.zoo.specs import resolve


def _one(budget: float, seed: int, a) -> dict:
    cfg = PruneConfig.from_dict(
        {"budget": f"latency={budget}", "seed": seed, "finetune_epochs": 0, "trust": a.trust, "target": "cpu"}
    )
    t0 = time.perf_counter()
    try:
        result = prune_spec("example:mnist1d", "mnist1d", a.batch_size, None, cfg, progress=False)
    except HwpruneError as e:
        return {"budget": budget, "seed": seed, "error": str(e), "seconds": time.perf_counter() - t0}
    r = result.report
    return {
        "budget": budget,
        "seed": seed,
        "result": result,
        "iterations": len(r.loop),
        "verdict": r.budget.verdict,
        "ratio": r.latency_ratio,
        "ratio_ci": r.latency_ratio_ci,
        "stable": r.machine.stable if r.machine else None,
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3, 0.15])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--trust", type=float, default=0.75)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    runs = []
    t0 = time.perf_counter()
    total = len(a.budgets) * len(a.seeds)
    for budget in a.budgets:
        for seed in a.seeds:
            runs.append(_one(budget, seed, a))
            done = time.perf_counter() - t0
            print(
                f"run {len(runs)}/{total} (budget {budget}, seed {seed}): "
                + (runs[-1].get("error") or f"{runs[-1]['iterations']} iterations, {runs[-1]['verdict']}")
                + f" ({done:.0f} s, ETA {done / len(runs) * (total - len(runs)):.0f} s)",
                flush=True,
            )
    target = get_target("cpu")
    example = resolve("example:mnist1d", a.batch_size, None, False).example_inputs
    rows = []
    for run in runs:
        if "error" in run:
            rows.append([run["budget"], run["seed"], "—", "—", "—", "—", "FAILED: " + run["error"][:80]])
            continue
        res = run.pop("result")
        td, tp = target.time_models([res.dense, res.model], example, final=True)
        again = ratio_estimate(tp, td)
        run["remeasured"], run["remeasured_ci"] = again.value, [again.low, again.high]
        used = again.value / run["budget"]
        run["passed"] = 0.85 <= used <= 1.05
        rows.append(
            [
                run["budget"],
                run["seed"],
                run["iterations"],
                f"{run['ratio'] / run['budget']:.0%} [{run['ratio_ci'][0] / run['budget']:.0%}, "
                f"{run['ratio_ci'][1] / run['budget']:.0%}] {run['verdict']}",
                f"{used:.0%} [{again.low / run['budget']:.0%}, {again.high / run['budget']:.0%}]",
                f"{run['seconds']:.0f} s",
                "yes" if run["passed"] else "NO",
            ]
        )
    fp = target.fingerprint()
    passed = sum(bool(r.get("passed")) for r in runs)
    print(
        f"\nMNIST-1D demo CNN, batch {a.batch_size}, cpu, {fp.get('cpu')}, {fp.get('threads')} threads; "
        f"re-measured {time.perf_counter() - t0:.0f} s after the first run started. "
        f"Passed {passed}/{len(runs)} (re-measured median within 85-105% of the budget).\n"
    )
    headers = [
        "budget",
        "seed",
        "iterations",
        "report: used [95% CI], verdict",
        "re-measured: used [95% CI]",
        "run time",
        "pass",
    ]
    print(table(headers, rows))
    iters = [r["iterations"] for r in runs if "iterations" in r]
    if iters:
        print(f"\niterations: median {statistics.median(iters)}, max {max(iters)}")
    if a.json:
        save(a.json, {"fingerprint": fp, "runs": runs})


if __name__ == "__main__":
    main()
