"""Predicted vs measured whole-model latency on `cpu` and `cpu-ort`, dense and pruned to 0.5 of dense latency.

    python benchmarks/bench_prediction.py --out benchmarks/results/prediction.md   # everything (hours on 2 cores)
    python benchmarks/bench_prediction.py --models mlp --batches 1         # a one-minute smoke run
    python benchmarks/bench_prediction.py --models resnet18 --targets cpu-ort --batches 1 8

Each case prunes the model with the pipeline (`latency=0.5`, no fine-tuning) and then validates the cost
model with `hwprune.validate.validate` on the same latency table. Three predictions per case:

- pruned, pipeline: the plan's prediction when the loop chose it (remainder fitted on the dense model, two
  uniform calibration plans and the loop's earlier plans; never on this plan) vs the pipeline's final
  measurement.
- dense and pruned, fit on "uniform 0.85, 0.55, 0.3 + split 0.3/0.85": the remainder fitted on the
  calibration plans (three uniform: those fractions of every group kept; one split: the earlier half of the
  groups at 0.3, the later half at 0.85; neither model predicted), each timed in a pair with the dense model,
  vs one interleaved measurement of the dense and the pruned model.

A remainder fitted on the very model it predicts would be exact by construction, so no row does that.
The `layer sum` column is the sum of the table's layer curves with no fitted term at all.
Random weights (no downloads): latency does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "vit_b_16", "mlp"]
HERE = Path(__file__).resolve()


class MLP(nn.Module):
    """784 -> 1024 -> 1024 -> 1024 -> 10, the classic MNIST-sized MLP at the width where latency is GEMM-bound."""

    def __init__(self, d_in: int = 784, width: int = 1024, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def mlp() -> nn.Module:
    """The benchmark's MLP (the pipeline loads it as `benchmarks/bench_prediction.py:mlp`)."""
    torch.manual_seed(0)
    return MLP()


def model_spec(name: str) -> tuple[str, str | None]:
    """(model SPEC, per-sample input shape) for the pipeline."""
    if name == "mlp":
        return f"{HERE}:mlp", "784"
    return f"torchvision:{name}", None


def run_case(name: str, batch: int, target_name: str) -> dict:
    from hwprune.cli.run import prune_spec
    from hwprune.evaluate.validate import validate
    from hwprune.hardware.targets import get_target
    from hwprune.pipeline.config import PruneConfig
    from hwprune.zoo.specs import resolve

    spec, shape = model_spec(name)
    t0 = time.perf_counter()
    cfg = PruneConfig.from_dict({"budget": "latency=0.5", "target": target_name, "finetune_epochs": 0})
    result = prune_spec(spec, batch_size=batch, input_shape=shape, config=cfg, progress=False)
    example = resolve(spec, batch, shape, False).example_inputs
    r = result.report.to_dict()
    # The same target settings and cache as the pipeline: the table is read back, not measured again.
    target = get_target(target_name, threads=cfg.target.threads)
    rep = validate(
        result.dense,
        example,
        target,
        cache=cfg.target.cache,
        widths=result.plan.widths(),
        pruned=result.model,
        min_keep=cfg.loop.min_keep,
    )
    dense, pruned = rep.models
    return {
        "model": name,
        "batch": batch,
        "target": target_name,
        "fingerprint": r["fingerprint"],
        "latency_ratio": r["latency_ratio"],
        "budget_met": r["budget"]["met"],
        "rows": [
            {
                "variant": "dense",
                "fit": dense.remainder_fit,
                "layer_sum_ms": dense.layer_sum_s * 1e3,
                "predicted_ms": dense.predicted_s * 1e3,
                "measured_ms": dense.measured_s * 1e3,
            },
            {
                "variant": "pruned",
                "fit": pruned.remainder_fit,
                "layer_sum_ms": pruned.layer_sum_s * 1e3,
                "predicted_ms": pruned.predicted_s * 1e3,
                "measured_ms": pruned.measured_s * 1e3,
            },
            {
                "variant": "pruned",
                "fit": "pipeline",
                "layer_sum_ms": None,
                "predicted_ms": r["predicted_latency_ms"],
                "measured_ms": r["measured_latency_ms"],
            },
        ],
        "layer_median_abs_error": rep.median_abs_layer_error,
        "layer_worst": rep.to_dict()["worst_layer"],
        "wall_s": time.perf_counter() - t0,
    }


def _err(row: dict) -> float:
    return (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"]


def table_rows(case: dict) -> list[list]:
    """One printed row per prediction of a case (target, model, batch, variant, fit, ms figures, error)."""
    return [
        [
            case["target"],
            case["model"],
            case["batch"],
            row["variant"],
            row["fit"],
            "" if row["layer_sum_ms"] is None else f"{row['layer_sum_ms']:.3f}",
            f"{row['predicted_ms']:.3f}",
            f"{row['measured_ms']:.3f}",
            f"{100 * _err(row):+.1f}%",
        ]
        for row in case["rows"]
    ]


def _command(a) -> str:
    return (
        f"python benchmarks/bench_prediction.py --models {' '.join(a.models)} --batches "
        f"{' '.join(map(str, a.batches))} --targets {' '.join(a.targets)}"
    )


def run_cases(a) -> tuple[list[dict], list[list]]:
    """Every (target, model, batch) case of the command line; a failing case is recorded, not fatal."""
    cases, failures = [], []
    for target in a.targets:
        for name in a.models:
            for b in a.batches:
                try:
                    case = run_case(name, b, target)
                except Exception as e:  # one failing model must not lose the others' figures
                    msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                    failures.append([target, name, b, msg])
                    print(f"{target} {name} batch {b}: FAILED {msg}", flush=True)
                    continue
                cases.append(case)
                for row in table_rows(case):
                    print(" | ".join(str(c) for c in row), flush=True)
                worst = case["layer_worst"]
                print(
                    f"  layers: median |error| {100 * case['layer_median_abs_error']:.1f}%, worst "
                    f"{100 * worst['error']:+.1f}% ({worst['name']}); pruned/dense {case['latency_ratio']:.3f}, "
                    f"{case['wall_s']:.0f} s",
                    flush=True,
                )
    return cases, failures


def report(cases: list[dict], failures: list[list], commands: list[str]) -> str:
    """The markdown results: every prediction, then per target the median and worst absolute error."""
    from _common import table

    targets = list(dict.fromkeys(c["target"] for c in cases))
    rows = [row for t in targets for c in cases if c["target"] == t for row in table_rows(c)]
    summary = []
    for target in targets:
        mine = [c for c in cases if c["target"] == target]
        errs = [
            (abs(_err(row)), _err(row), c["model"], c["batch"], row["variant"], row["fit"])
            for c in mine
            for row in c["rows"]
        ]
        worst = max(errs)
        fp = mine[0]["fingerprint"]
        summary.append(
            [
                target,
                f"{fp['cpu']}, {fp['threads']} threads, {fp['runtime']}",
                len(errs),
                f"{100 * statistics.median(e[0] for e in errs):.1f}%",
                f"{100 * worst[1]:+.1f}% ({worst[2]} b{worst[3]} {worst[4]}, fit on {worst[5]})",
                f"{100 * statistics.median(c['layer_median_abs_error'] for c in mine):.1f}%",
            ]
        )
    headers = [
        "target",
        "model",
        "batch",
        "variant",
        "remainder fit on",
        "layer sum ms",
        "predicted ms",
        "measured ms",
        "error",
    ]
    text = [
        "# Predicted vs measured latency (`benchmarks/bench_prediction.py`)",
        "",
        *[f"`{c}`" + ("  " if k < len(commands) - 1 else "") for k, c in enumerate(commands)],
        "",
        "Pruned to `latency=0.5` by the pipeline (no fine-tuning). Error = (predicted - measured) / measured.",
        "",
        table(headers, rows),
        "",
        table(
            ["target", "machine", "predictions", "median abs error", "worst error", "median layer abs error"], summary
        ),
    ]
    if failures:
        text += ["", "Failed cases:", "", table(["target", "model", "batch", "error"], failures)]
    return "\n".join(text) + "\n"


def main() -> None:
    from _common import save

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--targets", nargs="+", default=["cpu", "cpu-ort"])
    ap.add_argument(
        "--out",
        default=None,
        help="also write the report to this markdown file (the acceptance table: benchmarks/results/prediction.md); "
        "a subset run should not overwrite it, so nothing is written unless asked",
    )
    ap.add_argument("--json", default=None, help="also write every case to this file")
    ap.add_argument(
        "--from-json",
        nargs="+",
        default=None,
        metavar="FILE",
        help="measure nothing: write the report from cases saved by earlier runs' --json (e.g. split by model)",
    )
    a = ap.parse_args()

    if a.from_json:
        cases, failures, commands = [], [], []
        for f in a.from_json:
            saved = json.loads(Path(f).read_text())
            cases += saved["cases"]
            failures += saved["failures"]
            commands.append(saved["command"])
    else:
        cases, failures = run_cases(a)
        commands = [_command(a)]
        save(a.json, {"command": commands[0], "cases": cases, "failures": failures})
    out = report(cases, failures, commands)
    print("\n" + out)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(out)


if __name__ == "__main__":
    main()
