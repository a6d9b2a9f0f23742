"""Calibration: fit a spec's efficiencies and per-op overhead to latencies measured on a real target.

`calibrate(spec, measured_target, layers)` fits compute efficiency, bandwidth efficiency and per-op
overhead (least squares on log latency) and reports the simulator's error before and after; `save_spec`
writes the fitted spec for `--target fitted.yaml`. `calibration_layers_from` picks the layers to fit on
from a model's analysed conv/linear layers (`hwprune.cli.profile.calibration_layers` analyses the model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.hardware.sim.spec import HardwareSpec, canonical_dtype
from hwprune.hardware.sim.target import SimulatedTarget


@dataclass
class CalibrationReport:
    """How far the simulator is from measurement, before and after fitting (abs % error per layer)."""

    spec: str
    measured_on: str  # the measured target's name
    dtype: str
    n_layers: int
    before_median_pct: float
    before_worst_pct: float
    after_median_pct: float
    after_worst_pct: float
    fitted: dict  # compute_efficiency, bandwidth_efficiency, op_overhead
    rows: list[dict] = field(default_factory=list)  # per layer: description, measured_s, before_s, after_s

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        f = self.fitted
        return (
            f"calibrated {self.spec} on {self.measured_on} ({self.n_layers} layers, {self.dtype}): "
            f"median error {self.before_median_pct:.1f}% -> {self.after_median_pct:.1f}%, "
            f"worst {self.before_worst_pct:.1f}% -> {self.after_worst_pct:.1f}%; "
            f"compute efficiency {f['compute_efficiency']:.3g}, bandwidth efficiency {f['bandwidth_efficiency']:.3g}, "
            f"op overhead {f['op_overhead'] * 1e6:.3g} us"
        )


def describe_layer(layer: nn.Module, x: torch.Tensor) -> str:
    if isinstance(layer, nn.Linear):
        return f"Linear {layer.in_features}->{layer.out_features} x{tuple(x.shape)}"
    if isinstance(layer, nn.modules.conv._ConvNd):
        k = "x".join(str(v) for v in layer.kernel_size)
        g = f" g{layer.groups}" if layer.groups > 1 else ""
        return f"{type(layer).__name__} {layer.in_channels}->{layer.out_channels} k{k}{g} x{tuple(x.shape)}"
    return f"{type(layer).__name__} x{tuple(x.shape)}"


def _terms(spec: HardwareSpec, dtype: str, layers) -> list[list[tuple[float, float]]]:
    """Per layer, per op: (compute s, memory s) at efficiency 1, to be scaled by 1/efficiency in the fit."""
    unit = replace(spec, compute_efficiency=1.0, bandwidth_efficiency=1.0, op_overhead=0.0)
    t = SimulatedTarget(unit, dtype=dtype)
    return [[(c.compute_s, c.memory_s) for c in t.layer_cost(m, x)] for m, x in layers]


def _predict(terms, u: np.ndarray, v: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Latency of every layer for arrays of (1/compute eff, 1/bandwidth eff, overhead); shape [..., n_layers]."""
    cols = []
    for ops in terms:
        total = np.zeros(np.broadcast(u, v, o).shape)
        for c, m in ops:
            total = total + np.maximum(c * u, m * v) + o
        cols.append(total)
    return np.stack(cols, axis=-1)


def _errors_pct(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.abs(pred - meas) / meas * 100.0


def _calibration_dtype(spec: HardwareSpec, measured_target, dtype: str | None) -> str:
    """`dtype`, else the measured target's dtype when the spec has it, else the spec's default."""
    if dtype is None:
        fp_dtype = canonical_dtype(measured_target.fingerprint().get("dtype", ""))
        dtype = fp_dtype if fp_dtype in spec.dtypes else spec.default_dtype
    dtype = canonical_dtype(dtype)
    if dtype not in spec.dtypes:
        raise HwpruneError(f"spec {spec.name} has no {dtype}; choose one of {', '.join(spec.dtypes)}")
    return dtype


Loss = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _grid_start(loss: Loss, spec: HardwareSpec) -> tuple[np.ndarray, float]:
    """Coarse grid in log space, four decades either side of the spec's own values (u = 1/efficiency)."""
    lu0, lv0 = -math.log(spec.compute_efficiency), -math.log(spec.bandwidth_efficiency)
    span = np.linspace(-4, 4, 33) * math.log(10)
    lo_grid = np.log(np.concatenate([[1e-12], np.logspace(-8, -1, 29)]))
    LU, LV, LO = np.meshgrid(lu0 + span, lv0 + span, lo_grid, indexing="ij")
    grid_loss = loss(LU, LV, LO)
    i = np.unravel_index(np.argmin(grid_loss), grid_loss.shape)
    return np.array([LU[i], LV[i], LO[i]]), float(grid_loss[i])


def _pattern_search(loss: Loss, p: np.ndarray, best: float) -> np.ndarray:
    """Step each parameter up and down, halve the step when nothing improves."""
    step = math.log(10) / 8
    while step > 1e-5:
        improved = False
        for d in range(3):
            for sgn in (1.0, -1.0):
                q = p.copy()
                q[d] += sgn * step
                lq = float(loss(q[0], q[1], q[2]))
                if lq < best - 1e-15:
                    p, best, improved = q, lq, True
        if not improved:
            step /= 2
    return p


def _fit(terms, meas: np.ndarray, spec: HardwareSpec) -> tuple[float, float, float]:
    """(compute efficiency, bandwidth efficiency, op overhead) minimising the squared error of log latency."""
    log_meas = np.log(meas)

    def loss(lu, lv, lo):
        pred = _predict(terms, np.exp(lu), np.exp(lv), np.exp(lo))
        return ((np.log(pred) - log_meas) ** 2).sum(-1)

    p = _pattern_search(loss, *_grid_start(loss, spec))
    ce, be, oh = math.exp(-p[0]), math.exp(-p[1]), math.exp(p[2])
    return ce, be, (0.0 if oh < 1e-11 else oh)


def _report(spec, measured_target, dtype, layers, terms, meas, fitted_vals: dict) -> CalibrationReport:
    """The error of the spec as it was and as fitted, per layer and summarised."""
    before = _predict(
        terms,
        np.array(1 / spec.compute_efficiency),
        np.array(1 / spec.bandwidth_efficiency),
        np.array(spec.op_overhead),
    )
    f = fitted_vals
    after = _predict(
        terms,
        np.array(1 / f["compute_efficiency"]),
        np.array(1 / f["bandwidth_efficiency"]),
        np.array(f["op_overhead"]),
    )
    eb, ea = _errors_pct(before, meas), _errors_pct(after, meas)
    return CalibrationReport(
        spec=spec.name,
        measured_on=getattr(measured_target, "name", type(measured_target).__name__),
        dtype=dtype,
        n_layers=len(layers),
        before_median_pct=float(np.median(eb)),
        before_worst_pct=float(eb.max()),
        after_median_pct=float(np.median(ea)),
        after_worst_pct=float(ea.max()),
        fitted=fitted_vals,
        rows=[
            {"layer": describe_layer(m, x), "measured_s": float(t), "before_s": float(b), "after_s": float(a)}
            for (m, x), t, b, a in zip(layers, meas, before, after, strict=True)
        ],
    )


def _fitted_spec(spec: HardwareSpec, measured_target, report: CalibrationReport) -> HardwareSpec:
    """The spec with the fitted efficiencies and overhead, and the calibration's provenance."""
    fp = measured_target.fingerprint() if hasattr(measured_target, "fingerprint") else {}
    f = report.fitted
    return replace(
        spec,
        name=spec.name if spec.name.endswith("-fitted") else f"{spec.name}-fitted",
        description=f"{spec.description}, calibrated on {fp.get('cpu', report.measured_on)}",
        compute_efficiency=f["compute_efficiency"],
        bandwidth_efficiency=f["bandwidth_efficiency"],
        op_overhead=f["op_overhead"],
        calibration={
            "from_spec": spec.source or spec.name,
            "measured_on": report.measured_on,
            "device_key": measured_target.device_key() if hasattr(measured_target, "device_key") else "",
            "dtype": report.dtype,
            "n_layers": report.n_layers,
            "median_abs_error_pct": {"before": report.before_median_pct, "after": report.after_median_pct},
            "worst_abs_error_pct": {"before": report.before_worst_pct, "after": report.after_worst_pct},
        },
        source="",
    )


def calibrate(
    spec: HardwareSpec, measured_target, layers: Sequence[tuple[nn.Module, torch.Tensor]], dtype: str | None = None
) -> tuple[HardwareSpec, CalibrationReport]:
    """Fit a spec's compute efficiency, bandwidth efficiency and per-op overhead to measured layer latencies.

    `measured_target` is any target (e.g. `get_target("cpu")`); each layer is timed on it with `time_layer`.
    The fit minimises the squared error of log latency (relative errors weigh small and large layers alike):
    a coarse grid over four decades either side of the spec's values, then a pattern search. The peaks, tiles
    and energies are left as they are, so a fitted spec stays comparable to its datasheet figures.

    `dtype` defaults to the measured target's dtype when the spec has it, else the spec's default.
    """
    layers = list(layers)
    if len(layers) < 3:
        raise HwpruneError(f"calibration needs at least 3 layers to fit 3 parameters, got {len(layers)}")
    dtype = _calibration_dtype(spec, measured_target, dtype)
    meas = np.array([measured_target.time_layer(m, x).median for m, x in layers], dtype=float)
    if not np.all(meas > 0):
        raise HwpruneError("a measured layer latency is zero or negative; cannot calibrate on it")
    terms = _terms(spec, dtype, layers)
    ce, be, oh = _fit(terms, meas, spec)
    fitted_vals = {"compute_efficiency": ce, "bandwidth_efficiency": be, "op_overhead": oh}
    report = _report(spec, measured_target, dtype, layers, terms, meas, fitted_vals)
    return _fitted_spec(spec, measured_target, report), report


def calibration_layers_from(
    infos: Sequence,
    fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    max_layers: int | None = None,
) -> list[tuple[nn.Module, torch.Tensor]]:
    """Fresh copies of analysed conv/linear layers at a few fractions of their prunable widths.

    `infos` are the layers of a model's analysis (`hwprune.groups.analysis.analyze(...).layers`: each with
    in/out channels, in/out group, `depthwise`, `signature()` and `build(c_in, c_out)`). Widths scale only
    where the layer's input/output belongs to a prunable group (as the pruner would change them); duplicates
    are dropped. `max_layers` keeps an evenly spread subset.
    """
    seen: set[tuple] = set()
    out: list[tuple[nn.Module, torch.Tensor]] = []
    for info in infos:
        for f in fractions:
            c_out = max(1, round(info.out_channels * f)) if info.out_group else info.out_channels
            c_in = max(1, round(info.in_channels * f)) if info.in_groups else info.in_channels
            if info.depthwise:
                c_in = c_out
            key = (info.signature(), c_in, c_out)
            if key in seen:
                continue
            seen.add(key)
            out.append(info.build(c_in, c_out))
    if max_layers is not None and len(out) > max_layers:
        idx = np.unique(np.round(np.linspace(0, len(out) - 1, max_layers)).astype(int))
        out = [out[i] for i in idx]
    return out
