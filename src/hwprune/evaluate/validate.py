"""How good is the cost model? Predicted vs measured latency, per layer and for the whole model.

Per layer: every conv/linear is rebuilt at the widths being checked, timed alone on the target, and
compared with what its table curve predicts (an interpolation unless the widths are a measured grid
point, when only re-measurement noise is left).

Whole model: the prediction is the sum of the layer curves plus the remainder (cost.CostModel), and the
remainder is *fitted* to whole-model measurements, so a model the remainder was fitted on is predicted
exactly by construction. An honest check predicts models the fit has not seen: the remainder is fitted
on the calibration plans (cost.calibration_plans), each timed in a pair with the dense model,
and then predicts the dense and the pruned model. The sum of the layer curves alone (no fitted term at
all) is shown beside them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from hwprune.apply.channels import apply_plan
from hwprune.core.errors import HwpruneError
from hwprune.cost.curves import Profiler
from hwprune.cost.model import CALIBRATION_KEEPS, SPLIT_KEEPS, CostModel, calibration_plans
from hwprune.groups.analysis import GroupAnalysis, LayerInfo, analyze
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.targets import get_target
from hwprune.hardware.timing import latency_estimate, ratio
from hwprune.plan.plan import make_plan


@dataclass
class LayerCheck:
    """One conv/linear at the checked widths: its curve's prediction and a fresh measurement (seconds)."""

    name: str
    kind: str
    c_in: int
    c_out: int
    predicted_s: float
    measured_s: float
    iqr_s: float
    on_grid: bool  # the widths are a point the table measured (no interpolation involved)

    @property
    def error(self) -> float:
        return (self.predicted_s - self.measured_s) / self.measured_s


@dataclass
class ModelCheck:
    """The whole model: predicted (layer sum + fitted remainder) vs measured (seconds)."""

    name: str  # dense | pruned
    layer_sum_s: float
    remainder_s: float
    measured_s: float
    iqr_s: float
    remainder_fit: str  # which measurement the remainder was fitted on ("none": predicted = layer sum)
    #: 95% confidence interval of the measured median (hardware.timing.latency_estimate)
    ci_low_s: float | None = None
    ci_high_s: float | None = None

    @classmethod
    def of(cls, name: str, fit, widths: dict[str, int], timing, how: str) -> ModelCheck:
        e = latency_estimate(timing)
        return cls(name, fit.layer_sum(widths), fit.remainder(widths), timing.median, timing.iqr, how, e.low, e.high)

    @property
    def predicted_s(self) -> float:
        return self.layer_sum_s + self.remainder_s

    @property
    def error(self) -> float:
        return (self.predicted_s - self.measured_s) / self.measured_s

    @property
    def layer_sum_error(self) -> float:
        return (self.layer_sum_s - self.measured_s) / self.measured_s


@dataclass
class ValidationReport:
    target: str
    fingerprint: dict
    input_shape: list[int] | None
    widths: dict[str, int] | None  # the checked (pruned) widths; None: the dense model only
    layers: list[LayerCheck] = field(default_factory=list)
    models: list[ModelCheck] = field(default_factory=list)

    @property
    def median_abs_layer_error(self) -> float:
        return float(np.median([abs(c.error) for c in self.layers])) if self.layers else float("nan")

    @property
    def worst_layer(self) -> LayerCheck | None:
        return max(self.layers, key=lambda c: abs(c.error)) if self.layers else None

    def to_dict(self) -> dict:
        worst = self.worst_layer
        return {
            "target": self.target,
            "fingerprint": self.fingerprint,
            "input_shape": self.input_shape,
            "widths": self.widths,
            "layers": [{**asdict(c), "error": c.error} for c in self.layers],
            "models": [
                {**asdict(m), "predicted_s": m.predicted_s, "error": m.error, "layer_sum_error": m.layer_sum_error}
                for m in self.models
            ],
            "median_abs_layer_error": self.median_abs_layer_error,
            "worst_layer": {"name": worst.name, "error": worst.error} if worst else None,
        }

    def to_table(self) -> str:
        fp = self.fingerprint
        device = fp.get("gpu") or fp.get("cpu", "?")
        shape = "x".join(map(str, self.input_shape)) if self.input_shape else "?"
        lines = [
            f"predicted vs measured on {self.target} ({device}, {fp.get('runtime', '?')}, {fp.get('dtype', '?')}, "
            f"{fp.get('threads', '?')} threads), input {shape}",
            "",
            f"{'layer':<44} {'c_in':>5} {'c_out':>5} {'predicted ms':>13} {'measured ms':>12} {'error':>8}  grid",
        ]
        for c in self.layers:
            lines.append(
                f"{c.name[-44:]:<44} {c.c_in:>5} {c.c_out:>5} {c.predicted_s * 1e3:>13.4f} "
                f"{c.measured_s * 1e3:>12.4f} {c.error:>+8.1%}  {'yes' if c.on_grid else 'no'}"
            )
        worst = self.worst_layer
        if worst is not None:
            lines.append(
                f"layers: median |error| {self.median_abs_layer_error:.1%}, worst {worst.error:+.1%} ({worst.name})"
            )
        lines += [
            "",
            f"{'model':<8} {'layer sum ms':>13} {'remainder ms':>13} {'predicted ms':>13} {'measured ms [95% CI]':>26} "
            f"{'error':>8} {'sum-only error':>15}  remainder fitted on",
        ]
        for m in self.models:
            ci = f"[{m.ci_low_s * 1e3:.3f}, {m.ci_high_s * 1e3:.3f}]" if m.ci_low_s is not None else ""
            measured = f"{m.measured_s * 1e3:.3f} {ci}"
            lines.append(
                f"{m.name:<8} {m.layer_sum_s * 1e3:>13.3f} {m.remainder_s * 1e3:>13.3f} {m.predicted_s * 1e3:>13.3f} "
                f"{measured:>26} {m.error:>+8.1%} {m.layer_sum_error:>+15.1%}  {m.remainder_fit}"
            )
        return "\n".join(lines)


def _check_widths(analysis: GroupAnalysis, widths: dict[str, int]) -> dict[str, int]:
    sizes = {g.id: g.size for g in analysis.groups}
    for gid, w in widths.items():
        if gid not in sizes:
            raise HwpruneError(f"widths name group '{gid}', which the model does not have (groups: {', '.join(sizes)})")
        if not 1 <= int(w) <= sizes[gid]:
            raise HwpruneError(f"width {w} of group '{gid}' must be between 1 and its size {sizes[gid]}")
    return {**sizes, **{g: int(w) for g, w in widths.items()}}


def _layer_widths(layer: LayerInfo, widths: dict[str, int]) -> tuple[int, int]:
    return layer.widths(widths)  # as CostModel sees the layer


def validate(
    model: nn.Module,
    example_inputs,
    target,
    cache: LatencyCache | str | Path | None = None,
    widths: dict[str, int] | None = None,
    *,
    pruned: nn.Module | None = None,
    min_keep: float = 0.1,
    progress: bool = False,
) -> ValidationReport:
    """Compare the cost model's predictions with measurements on `target` (a Target or its name).

    `model` is the dense model; its latency table is built (or read from `cache`) as the pipeline does.
    `widths` ({group id: width}, e.g. `plan.widths()`): check the layers at these widths and predict the
    pruned model's latency from a remainder fitted on the dense model only. `pruned`: that pruned model,
    if the caller has it (otherwise it is built from the widths; which channels are kept does not change
    latency). `min_keep` must match the pipeline's so the table has the same candidate widths.
    """
    if isinstance(target, str):
        target = get_target(target)
    if not isinstance(cache, LatencyCache):
        cache = LatencyCache(cache)
    model.eval()
    analysis = analyze(model, example_inputs, min_keep)
    dense_w = {g.id: g.size for g in analysis.groups}
    check_w = _check_widths(analysis, widths) if widths else dense_w

    profiler = Profiler(target, cache, progress)
    curves = profiler.build(analysis)
    report = ValidationReport(
        target=getattr(target, "name", type(target).__name__),
        fingerprint=target.fingerprint(),
        input_shape=list(example_inputs.shape) if isinstance(example_inputs, torch.Tensor) else None,
        widths=dict(check_w) if widths else None,
    )

    measured: dict[tuple, tuple[float, float]] = {}
    for la in analysis.layers:
        c_in, c_out = _layer_widths(la, check_w)
        key = (la.signature(), c_in, c_out)
        on_grid = cache.get(profiler.device, key[0], c_in, c_out) is not None
        if key not in measured:  # identical layers (repeated blocks) are timed once
            t = target.time_layer(*la.build(c_in, c_out))
            measured[key] = (t.median, t.iqr)
        med, iqr = measured[key]
        report.layers.append(LayerCheck(la.name, la.kind, c_in, c_out, curves[la.name](c_in, c_out), med, iqr, on_grid))

    order = {g.id: -np.arange(g.size) for g in analysis.groups}  # which channels are kept does not matter
    if widths is None:
        # One model: the remainder is fitted on the calibration plans only, so the prediction is out of sample.
        td = target.time_models([model], example_inputs, final=True)[0]
        fit = _fit_on_calibration_plans(model, example_inputs, analysis, curves, target, order, td.median)
        report.models.append(ModelCheck.of("dense", fit, dense_w, td, _CAL))
        return report

    if pruned is None:
        pruned = apply_plan(
            model, example_inputs, make_plan(check_w, order, dense_w, analysis.multiples, units=analysis.units)
        )
    pruned.eval()
    # The remainder is fitted on three calibration plans that are neither model being predicted, so both
    # predictions are out of sample (a remainder fitted on the model it predicts is exact by construction).
    td, tp = target.time_models([model, pruned], example_inputs, final=True)
    fit = _fit_on_calibration_plans(model, example_inputs, analysis, curves, target, order, td.median)
    how = _CAL
    report.models += [
        ModelCheck.of("dense", fit, dense_w, td, how),
        ModelCheck.of("pruned", fit, check_w, tp, how),
    ]
    return report


_CAL = "uniform " + ", ".join(f"{k:g}" for k in CALIBRATION_KEEPS) + " + split {:g}/{:g}".format(*SPLIT_KEEPS)


def calibrate(cost: CostModel, model: nn.Module, example_inputs, scores, target, t_dense: float) -> None:
    """Fit `cost`'s remainder on the calibration plans (cost.calibration_plans), each timed in a pair
    with the dense `model` and put on `t_dense`'s scale; on targets that can time layers inside a model
    (`in_graph_times`), each plan's kernels also correct the layer curves. `scores` rank the channels kept."""
    profile = getattr(target, "in_graph_times", None)
    for w in calibration_plans(cost.analysis):
        plan_model = apply_plan(
            model, example_inputs, make_plan(w, scores, cost.sizes, cost.analysis.multiples, units=cost.analysis.units)
        ).eval()
        # One pair (dense, plan) at a time, as the loop measures: interleaving many differently shaped
        # models in one run thrashes the kernel library's primitive cache and slows the small ones.
        td, tc = target.time_models([model, plan_model], example_inputs)
        measured = ratio(tc, td) * t_dense
        if profile is not None:
            # Each kernel's share of the plan's run, times the plan's latency on t_dense's scale: profiled
            # seconds carry the machine's speed at that moment, which this pair's ratio has cancelled.
            cost.add_in_graph(w, [n.at(measured) for n in profile(plan_model, example_inputs)])
        cost.add_measurement(w, measured)


def _fit_on_calibration_plans(model, example_inputs, analysis, curves, target, order, t_dense) -> CostModel:
    """A cost model fitted on the calibration plans only (neither the dense nor the pruned model)."""
    fit = CostModel(analysis, curves)
    calibrate(fit, model, example_inputs, order, target, t_dense)
    return fit
