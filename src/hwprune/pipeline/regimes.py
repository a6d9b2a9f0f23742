"""`--budget prefill=...` / `decode=...`: a causal language model budgeted in one latency regime, and measured
in both (`hwprune.hardware.regime` says why the two differ and how a decode step is timed)."""

from __future__ import annotations

import torch.nn as nn

from hwprune.core.budget import Budget
from hwprune.core.errors import HwpruneError
from hwprune.hardware.regime import DecodeTarget, decode_inputs, is_causal_lm
from hwprune.hardware.timing import ratio_estimate
from hwprune.report.schema import RegimeFigure


def budgeted_regime(budgets: list[Budget]) -> str | None:
    return next((b.regime for b in budgets if b.regime), None)


def setup(model: nn.Module, example, target, regime: str | None):
    """(target, example inputs) the run plans and measures with: for `decode`, one token per sequence timed
    with the KV cache filled from `example` (the prompt); otherwise as given."""
    if regime is None:
        return target, example
    if not is_causal_lm(model):
        raise HwpruneError(
            f"--budget {regime}=...: {type(model).__name__} is not a causal language model (a transformers model "
            "that generates); use latency=..."
        )
    if regime == "prefill":
        decode_inputs(example)  # a text model's inputs, checked now rather than when the report is written
        return target, example
    return DecodeTarget(target, example["input_ids"]), decode_inputs(example)


def _call(regime: str, prompt) -> str:
    b, n = prompt["input_ids"].shape
    if regime == "prefill":
        return f"batch {b} x {n} tokens"
    return f"batch {b}, 1 token per sequence, context {n}"


def figures(run, pruned: nn.Module, measured: dict) -> list[RegimeFigure]:
    """Both regimes' dense and pruned latency: the budgeted one from the run's final measurement
    (`measured`: `figures.final_figures`' fields), the other timed here, interleaved, on the run's target."""
    if run.regime is None:
        return []
    prompt = run.prompt
    base_target = run.target.inner if isinstance(run.target, DecodeTarget) else run.target
    budgeted = RegimeFigure(
        regime=run.regime,
        call=_call(run.regime, prompt),
        dense_ms=measured["dense"].latency.median_ms,
        pruned_ms=measured["pruned"].latency.median_ms,
        ratio=measured["latency_ratio"],
        ratio_ci=list(measured["latency_ratio_ci"]),
        budgeted=True,
    )
    other = "prefill" if run.regime == "decode" else "decode"
    target, example = setup(run.dense, prompt, base_target, other)
    td, tp = target.time_models([run.dense, pruned], example, final=True)
    r = ratio_estimate(tp, td)
    measured_other = RegimeFigure(
        regime=other,
        call=_call(other, prompt),
        dense_ms=td.median * 1e3,
        pruned_ms=tp.median * 1e3,
        ratio=r.value,
        ratio_ci=[r.low, r.high],
        budgeted=False,
    )
    return sorted([budgeted, measured_other], key=lambda f: f.regime != "prefill")
