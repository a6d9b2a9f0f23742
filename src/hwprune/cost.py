"""Stage 3: the latency of every layer at every candidate width, from the measured table.

Each layer's latency is measured on a sparse grid of (input width, output width) points and
interpolated between them. The output-width axis is refined by bisection wherever the measured
curve departs from a straight line, so the staircase edges (DESIGN.md) are found without timing
every width. The model's predicted latency is the sum of its layers plus a *remainder* (BN, ReLU,
adds, pooling, Python overhead) that is fitted to whole-model measurements as
`R0 + R1 * phi`, where `phi` is the fraction of activation elements the plan keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .groups import GroupAnalysis, LayerInfo
from .hardware.table import LatencyCache

#: A refinement point is measured when an interval spans more than one candidate width; it is split
#: further while the midpoint is off the straight line by more than this fraction (a step edge).
STEP_TOLERANCE = 0.05
#: Out-width points measured per layer before refinement, in-width rows per layer.
OUT_SAMPLES = 7
IN_SAMPLES = 3
MAX_REFINE = 8


def _spread(cands: list[int], n: int) -> list[int]:
    if len(cands) <= n:
        return list(cands)
    idx = np.unique(np.round(np.linspace(0, len(cands) - 1, n)).astype(int))
    return [cands[i] for i in idx]


@dataclass
class LayerCurve:
    """Measured latency (s) of one layer on a grid, bilinear in between."""

    in_samples: list[int]
    out_samples: list[int]
    grid: np.ndarray  # [len(in_samples), len(out_samples)]
    depthwise: bool = False

    def __call__(self, c_in: int, c_out: int) -> float:
        if self.depthwise:
            return float(np.interp(c_out, self.out_samples, self.grid[0]))
        rows = [np.interp(c_out, self.out_samples, r) for r in self.grid]
        if len(self.in_samples) == 1:
            return float(rows[0])
        return float(np.interp(c_in, self.in_samples, rows))


class Profiler:
    """Builds LayerCurves for a model on a target, through the on-disk cache."""

    def __init__(self, target, cache: LatencyCache, progress: bool = True):
        self.target = target
        self.cache = cache
        self.device = target.device_key()
        cache.register_device(self.device, target.fingerprint())
        self.progress = progress
        self.measured = 0
        self._bar = None

    def entry(self, layer: LayerInfo, c_in: int, c_out: int) -> float:
        sig = layer.signature()
        hit = self.cache.get(self.device, sig, c_in, c_out)
        if hit is not None:
            return hit[0]
        mod, x = layer.build(c_in, c_out)
        t = self.target.time_layer(mod, x)
        self.cache.put(self.device, sig, c_in, c_out, t.median, t.iqr, t.n)
        self.measured += 1
        if self._bar is not None:
            self._bar.set_postfix(measured=self.measured, cached=self.cache.hits)
        return t.median

    def _row(self, layer, c_in, outs, cands, refine: bool, dw: bool) -> tuple[list[int], list[float]]:
        pts = {o: self.entry(layer, o if dw else c_in, o) for o in outs}
        if refine:
            stack = list(zip(outs[:-1], outs[1:]))
            extra = 0
            while stack and extra < MAX_REFINE:
                lo, hi = stack.pop(0)
                inner = [c for c in cands if lo < c < hi]
                if not inner:
                    continue
                mid = inner[len(inner) // 2]
                pts[mid] = self.entry(layer, mid if dw else c_in, mid)
                extra += 1
                lin = pts[lo] + (pts[hi] - pts[lo]) * (mid - lo) / (hi - lo)
                if abs(pts[mid] - lin) > STEP_TOLERANCE * max(pts[hi], pts[lo]):
                    stack += [(lo, mid), (mid, hi)]
        xs = sorted(pts)
        return xs, [pts[x] for x in xs]

    def curve(self, layer: LayerInfo, in_cands: list[int], out_cands: list[int]) -> LayerCurve:
        if layer.depthwise:
            xs, ys = self._row(layer, 0, _spread(out_cands, OUT_SAMPLES + 2), out_cands, True, True)
            return LayerCurve(xs, xs, np.array([ys]), depthwise=True)
        outs = _spread(out_cands, OUT_SAMPLES)
        full_in = max(in_cands)
        outs, top = self._row(layer, full_in, outs, out_cands, len(out_cands) > 2, False)
        ins = sorted(set(_spread(in_cands, IN_SAMPLES)))
        rows = {full_in: top}
        for c_in in ins:
            if c_in not in rows:
                rows[c_in] = self._row(layer, c_in, outs, out_cands, False, False)[1]
        return LayerCurve(ins, outs, np.array([rows[c] for c in ins]))

    def build(self, analysis: GroupAnalysis) -> dict[str, LayerCurve]:
        """Curves for every timed layer of the model (measuring only what the cache lacks)."""
        cands = {g.id: g.candidates for g in analysis.groups}
        curves: dict[str, LayerCurve] = {}
        memo: dict[tuple, LayerCurve] = {}
        with tqdm(analysis.layers, desc="latency table", unit="layer", disable=not self.progress) as bar:
            self._bar = bar
            for layer in bar:
                in_c = (
                    [c * layer.in_mult for c in cands[layer.in_group]]
                    if layer.in_group in cands
                    else [layer.in_channels]
                )
                out_c = cands.get(layer.out_group, [layer.out_channels])
                key = (layer.signature(), tuple(in_c), tuple(out_c))
                if key not in memo:
                    memo[key] = self.curve(layer, in_c, out_c)
                curves[layer.name] = memo[key]
            self._bar = None
        return curves


@dataclass
class CostModel:
    """Predicted model latency for any assignment of widths to groups."""

    analysis: GroupAnalysis
    curves: dict[str, LayerCurve]
    r0: float = 0.0
    r1: float = 0.0
    fit_points: list[tuple[float, float]] = field(default_factory=list)  # (phi, measured - layer sum)

    def __post_init__(self):
        self.sizes = {g.id: g.size for g in self.analysis.groups}
        self._act_total = sum(la.output_numel for la in self.analysis.layers) or 1

    def dense_widths(self) -> dict[str, int]:
        return dict(self.sizes)

    def _widths_of(self, layer: LayerInfo, widths: dict[str, int]) -> tuple[int, int]:
        c_in = widths[layer.in_group] * layer.in_mult if layer.in_group in widths else layer.in_channels
        c_out = widths[layer.out_group] if layer.out_group in widths else layer.out_channels
        return c_in, c_out

    def layer_sum(self, widths: dict[str, int]) -> float:
        return sum(self.curves[la.name](*self._widths_of(la, widths)) for la in self.analysis.layers)

    def phi(self, widths: dict[str, int]) -> float:
        kept = 0.0
        for la in self.analysis.layers:
            frac = widths.get(la.out_group, self.sizes.get(la.out_group, 1)) / self.sizes.get(la.out_group, 1)
            kept += la.output_numel * (frac if la.out_group else 1.0)
        return kept / self._act_total

    def remainder(self, widths: dict[str, int]) -> float:
        return self.r0 + self.r1 * self.phi(widths)

    def predict(self, widths: dict[str, int]) -> float:
        return self.layer_sum(widths) + self.remainder(widths)

    def add_measurement(self, widths: dict[str, int], measured: float) -> None:
        """Refit the remainder to every whole-model measurement so far (least squares, R1 >= 0)."""
        self.fit_points.append((self.phi(widths), measured - self.layer_sum(widths)))
        phis = np.array([p for p, _ in self.fit_points])
        res = np.array([r for _, r in self.fit_points])
        if len(self.fit_points) == 1 or np.ptp(phis) < 1e-3:
            # One point: assume the remainder scales with the activations it touches. A negative residual
            # (the layers timed alone overestimate the model) is a constant offset instead: a negative
            # slope would make narrower plans look slower.
            r = float(res.mean())
            self.r0, self.r1 = (0.0, r / max(float(phis.mean()), 1e-6)) if r >= 0 else (r, 0.0)
        else:
            r1, r0 = np.polyfit(phis, res, 1)
            if r1 < 0:
                r1, r0 = 0.0, float(res.mean())
            self.r0, self.r1 = float(r0), float(r1)

    def phi_share(self, g_id: str, width: int) -> float:
        """Group `g_id`'s part of `phi` at `width` (phi is separable over groups)."""
        act = sum(la.output_numel for la in self.analysis.layers if la.out_group == g_id)
        return act * width / self.sizes[g_id] / self._act_total

    def group_costs(self, g_id: str, widths: dict[str, int], candidates: list[int]) -> np.ndarray:
        """Latency of everything that depends on group `g_id`, at each candidate, others held at `widths`."""
        out = np.zeros(len(candidates))
        touching = [la for la in self.analysis.layers if g_id in (la.in_group, la.out_group)]
        for j, w in enumerate(candidates):
            trial = {**widths, g_id: w}
            out[j] = sum(self.curves[la.name](*self._widths_of(la, trial)) for la in touching)
            out[j] += self.r1 * self.phi_share(g_id, w)
        return out


#: Keep fractions of the two uniform plans the remainder is calibrated on before any plan is chosen: one near
#: the dense model and one near the middle of the range budgets land in, so both ends of `R0 + R1 * phi`
#: are pinned by measurements (one dense point cannot tell a fixed per-call cost from one that scales).
CALIBRATION_KEEPS = (0.8, 0.4)


def uniform_widths(analysis: GroupAnalysis, keep: float) -> dict[str, int]:
    """Every group at the candidate width nearest `keep` x its size."""
    return {g.id: min(g.candidates, key=lambda c: abs(c - keep * g.size)) for g in analysis.groups}
