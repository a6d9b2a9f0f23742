"""Stage 3, predicting: the latency of any assignment of widths, from the layers' measured curves (curves.py).

The model's predicted latency is the sum of its layers plus a *remainder* (BN, ReLU,
adds, pooling, Python overhead) that is fitted to whole-model measurements (CostModel): a constant plus
a term in the activations kept, the weights kept, or the layer sum itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hwprune.cost.curves import LayerCurve
from hwprune.groups.analysis import GroupAnalysis, LayerInfo


def layer_weights(layer: LayerInfo, c_in: int, c_out: int) -> float:
    """Weights (and bias) of a conv/linear layer at widths (c_in, c_out): the bytes it streams per call."""
    k = int(np.prod(layer.kernel_size)) if layer.kernel_size else 1
    if layer.depthwise:
        return float(c_out * k + (c_out if layer.bias else 0))
    return float(c_in * c_out * k + (c_out if layer.bias else 0))


#: ONNX Runtime's CPU convs run in a blocked layout (NCHWc) whose channel blocks are 8 floats wide with AVX2
#: and 16 with AVX-512, so a conv's channels are padded up to the block and its profiled shapes show the padded
#: count: on mobilenet_v3_small in ORT (2 threads, AVX2) a 20-channel layer profiled as 24 and a 9-channel one
#: as 16, and exact matching found 34 of its 54 layers in a uniform 0.55 plan.
CHANNEL_BLOCKS = (8, 16)


def _same_width(width: int, profiled: int, conv: bool) -> bool:
    """Whether a kernel profiled with `profiled` channels runs a layer of `width` (convs: maybe block-padded)."""
    if profiled == width:
        return True
    return conv and any(profiled == -(-width // b) * b for b in CHANNEL_BLOCKS)


class _WithWeights:
    """A layer's measured curve times its in-graph factor and the fitted scale, plus its share of the
    weight-proportional remainder, R2 * weights / total."""

    def __init__(self, owner: CostModel, layer: LayerInfo, curve):
        self.owner, self.layer, self.curve = owner, layer, curve

    def __call__(self, c_in: int, c_out: int) -> float:
        t = self.owner.scale * self.owner.in_graph(self.layer.name, self.curve(c_in, c_out))
        if self.owner.r2:
            t += self.owner.r2 * layer_weights(self.layer, c_in, c_out) / self.owner._weights_total
        return t


@dataclass
class CostModel:
    """Predicted model latency for any assignment of widths to groups.

    Latency = the layers' measured curves + a remainder fitted to whole-model measurements,
    R0 + R1 * phi + R2 * psi: a fixed per-call part, a part that scales with the activations kept (phi:
    BatchNorm, activations, adds, pooling) and a part that scales with the weights kept (psi: each layer is
    timed alone with its weights hot in cache; inside a model larger than the cache they stream from
    memory, which dominates batch-1 MLPs), or instead (S - 1) x the layer sum (the table as a whole is off
    by a factor: ONNX Runtime's stand-alone layers, or a machine slower today than when it was profiled).
    The psi part and the scale S are folded into the layer curves (`curves`), so every allocator sees them;
    `base_curves` are the measured ones. `add_measurement` fits the terms.
    """

    analysis: GroupAnalysis
    curves: dict[str, LayerCurve]
    r0: float = 0.0
    r1: float = 0.0
    r2: float = 0.0
    scale: float = 1.0  # layer curves x scale (see add_measurement)
    #: (phi, psi, layer sum, measured - layer sum) of every whole-model measurement
    fit_points: list[tuple[float, float, float, float]] = field(default_factory=list)
    #: Layer name -> (table time, in-graph time / table time) at each profiled plan, where the target can
    #: time layers inside the whole model (add_in_graph)
    ratios: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def __post_init__(self):
        self.sizes = {g.id: g.size for g in self.analysis.groups}
        self._act_total = sum(la.output_numel for la in self.analysis.layers) or 1
        self._weights_total = sum(layer_weights(la, la.in_channels, la.out_channels) for la in self.analysis.layers)
        self._weights_total = self._weights_total or 1.0
        self.base_curves = self.curves
        self.curves = {la.name: _WithWeights(self, la, self.base_curves[la.name]) for la in self.analysis.layers}
        self._measurements: list[tuple[dict[str, int], float]] = []
        self._ratio_arrays = {
            name: tuple(np.array(axis) for axis in zip(*pts, strict=False)) for name, pts in self.ratios.items()
        }

    def dense_widths(self) -> dict[str, int]:
        return dict(self.sizes)

    def _widths_of(self, layer: LayerInfo, widths: dict[str, int]) -> tuple[int, int]:
        return layer.widths(widths)

    def layer_sum(self, widths: dict[str, int]) -> float:
        """The measured layer curves at `widths`, each times its in-graph factor (no fitted term)."""
        return sum(
            self.in_graph(la.name, self.base_curves[la.name](*self._widths_of(la, widths)))
            for la in self.analysis.layers
        )

    def in_graph(self, name: str, table_s: float) -> float:
        """Layer `name`'s time inside the model when the table says `table_s`: the in-graph / table ratio
        interpolated between the profiled plans by table time (constant beyond them); 1 if never profiled."""
        if name not in self._ratio_arrays:
            return table_s
        xs, ys = self._ratio_arrays[name]  # `ratios` as arrays: this runs on every curve evaluation
        return table_s * float(np.interp(table_s, xs, ys))

    def add_in_graph(self, widths: dict[str, int], nodes) -> int:
        """Correct each layer's curve by its time inside the whole model at `widths` (`nodes`: the target's
        `in_graph_times` of that model); returns how many layers were matched.

        A layer is matched to a kernel of the same kind (conv or linear) with its input shape and output
        channels at these widths (a conv's maybe padded to a channel block, CHANNEL_BLOCKS), in order among
        identical ones. Its curve is then scaled by in-graph time /
        table time, interpolated by table time between the profiled plans (`in_graph`); unmatched layers
        keep their table curve, and whatever they cost in the graph is left to the remainder. The ratio is
        not one number per model: on resnet18 in ONNX Runtime (2 threads, batch 1, dense widths) it ranged
        from 0.53 (layer4's 1x1 downsample) to 1.22 (layer4.0.conv1), so one scale for the whole table
        mispredicts plans that cut layers unequally.
        """
        free = list(nodes)
        matched = 0
        for la in self.analysis.layers:
            c_in, c_out = self._widths_of(la, widths)
            shape = list(la.input_shape)
            conv = la.kind.startswith("conv")
            for i, node in enumerate(free):
                n = next((c for c in _layouts(node) if _matches(c, shape, c_in, c_out, conv)), None)
                if n is None:
                    continue
                table = self.base_curves[la.name](c_in, c_out)
                if table > 0:
                    pts = [p for p in self.ratios.get(la.name, []) if p[0] != table] + [(table, n.seconds / table)]
                    self.ratios[la.name] = sorted(pts)
                    self._ratio_arrays[la.name] = tuple(
                        np.array(axis) for axis in zip(*self.ratios[la.name], strict=False)
                    )
                    matched += 1
                del free[i]
                break
        self._refit()
        return matched

    def phi(self, widths: dict[str, int]) -> float:
        kept = 0.0
        for la in self.analysis.layers:
            frac = widths.get(la.out_group, self.sizes.get(la.out_group, 1)) / self.sizes.get(la.out_group, 1)
            kept += la.output_numel * (frac if la.out_group else 1.0)
        return kept / self._act_total

    def psi(self, widths: dict[str, int]) -> float:
        """Fraction of the conv/linear weights kept."""
        kept = sum(layer_weights(la, *self._widths_of(la, widths)) for la in self.analysis.layers)
        return kept / self._weights_total

    def remainder(self, widths: dict[str, int]) -> float:
        return self.predict(widths) - self.layer_sum(widths)

    def predict(self, widths: dict[str, int]) -> float:
        """The fitted latency, never below 0: a signed remainder fit once predicted -0.54 ms for a tiny model's
        narrow plan, and the loop then aimed at -0.31 ms."""
        fitted = self.r0 + self.r1 * self.phi(widths) + self.r2 * self.psi(widths)
        return max(self.scale * self.layer_sum(widths) + fitted, 0.0)

    def _layer_term(self, la: LayerInfo, widths: dict[str, int]) -> float:
        """Layer `la`'s part of `predict` before the constant r0: its curve and its shares of phi and psi."""
        c_in, c_out = self._widths_of(la, widths)
        t = self.scale * self.in_graph(la.name, self.base_curves[la.name](c_in, c_out))
        if self.r1:
            size = self.sizes.get(la.out_group, 1)
            frac = widths.get(la.out_group, size) / size if la.out_group else 1.0
            t += self.r1 * la.output_numel * frac / self._act_total
        if self.r2:
            t += self.r2 * layer_weights(la, c_in, c_out) / self._weights_total
        return t

    def around(self, widths: dict[str, int]) -> Callable[[dict[str, int]], float]:
        """`predict` of `widths` with a few groups changed ({group: width}), re-reading only the layers those
        groups touch. The allocators' local search asks this hundreds of thousands of times per plan: on
        ViT-L/32 (146 layers) full predictions took 407 of a 522 s macs=0.5 run."""
        if not hasattr(self, "_touching"):
            self._touching = {g: [] for g in self.sizes}
            for i, la in enumerate(self.analysis.layers):
                for g in {la.out_group, *la.in_groups} - {None}:
                    self._touching.setdefault(g, []).append(i)
        layers = self.analysis.layers
        terms = [self._layer_term(la, widths) for la in layers]
        base = self.r0 + sum(terms)

        def predict(changes: dict[str, int]) -> float:
            trial = {**widths, **changes}
            hit = {i for g in changes for i in self._touching.get(g, ())}
            return max(base + sum(self._layer_term(layers[i], trial) - terms[i] for i in hit), 0.0)

        return predict

    def physical(self, widths: dict[str, int]) -> float:
        """`predict`, and never below a measured plan that is nowhere wider: the figure the loop and the report
        state. The allocators search on `predict` alone: with this floor in it, every plan at least as wide
        as one measured over the aim looked infeasible, and a 0.15 run fell back to a plan at 0.7 of dense."""
        return max(self.predict(widths), self.floor(widths))

    def floor(self, widths: dict[str, int]) -> float:
        """The slowest measured plan with every group at most as wide as in `widths` (0 when there is none):
        removing channels does not make a model slower, so `widths` costs at least that."""
        best = 0.0
        for w, m in self._measurements:
            if m > best and all(w.get(g, n) <= widths.get(g, n) for g, n in self.sizes.items()):
                best = m
        return best

    def add_measurement(self, widths: dict[str, int], measured: float) -> None:
        """Refit the remainder to every whole-model measurement so far (least squares)."""
        self._measurements.append((dict(widths), measured))
        self._refit()

    def _refit(self) -> None:
        sums = [(w, m, self.layer_sum(w)) for w, m in self._measurements]
        self.fit_points = [(self.phi(w), self.psi(w), ls, m - ls) for w, m, ls in sums]
        if not self.fit_points:
            return
        pts = np.array(self.fit_points)
        phis, res = pts[:, 0], pts[:, 3]
        if len(pts) == 1 or np.ptp(phis) < 1e-3:
            # One point: assume the remainder scales with the activations it touches. A negative residual
            # (the layers timed alone overestimate the model) is a constant offset instead: a negative
            # slope would make narrower plans look slower.
            r = float(res.mean())
            self.r0, self.r1, self.r2 = (0.0, r / max(float(phis.mean()), 1e-6), 0.0) if r >= 0 else (r, 0.0, 0.0)
            self.scale = 1.0
            return
        # Candidate models: a constant, plus one of the activations kept (phi), the weights kept (psi) or the
        # layer sum itself (a scale on the table), and with 6+ points phi and psi together; the smallest
        # squared error wins. Signs are free: a layer timed alone in ONNX Runtime pays for converting its input
        # and output to and from the blocked layout and across the session boundary, which a whole graph
        # does once, so there the table overestimates by an amount that grows with the widths; and a table
        # measured on another day on a shared machine is off by a factor. Measured in ORT on the MLP and
        # mobilenet_v2 (batch 1 and 8), mobilenet_v3_small and resnet18 (batch 1), fit on 3 uniform plans and
        # predicting 4 others: non-negative slopes left a median |error| of 18% and a worst of 133%, signed
        # ones 6.5% and 15%. A fit is kept only if wider plans
        # still predict slower (`_monotone`), else the allocator could "save" latency by adding channels.
        fits = [(float(np.sum((res - res.mean()) ** 2)), (float(res.mean()), 0.0, 0.0, 1.0))]
        terms = [(0,), (1,), (2,)] + ([(0, 1)] if len(pts) >= 6 else [])  # columns of pts: phi, psi, layers
        for cols in terms:
            a = np.column_stack([np.ones(len(pts))] + [pts[:, c] for c in cols])
            coef, *_ = np.linalg.lstsq(a, res, rcond=None)
            full = [float(coef[0]), 0.0, 0.0, 0.0]
            for c, v in zip(cols, coef[1:], strict=False):
                full[c + 1] = float(v)
            if full[3] <= -1.0:
                continue  # a scale <= 0
            fits.append((float(np.sum((a @ coef - res) ** 2)), (full[0], full[1], full[2], 1.0 + full[3])))
        for _, (r0, r1, r2, scale) in sorted(fits, key=lambda f: f[0]):
            if (r1 >= 0 and r2 >= 0 and scale >= 1.0) or self._monotone(r1, r2, scale):
                self.r0, self.r1, self.r2, self.scale = r0, r1, r2, scale
                return

    def _monotone(self, r1: float, r2: float, scale: float) -> bool:
        """Whether, with these fitted terms, wider still predicts slower: every group at its widest costs at
        least what it costs at its narrowest, unless its measured curves already fall (noise), with its
        neighbours at their narrowest and at dense; and uniform plans get slower as the kept fraction grows.
        Single steps are not checked: the measured curves have small noisy dips."""
        saved = self.r1, self.r2, self.scale
        fitted, bare = (r1, r2, scale), (0.0, 0.0, 1.0)
        try:
            narrow = {g.id: g.candidates[0] for g in self.analysis.groups}
            for others in (narrow, self.dense_widths()):
                for g in self.analysis.groups:
                    ends = [g.candidates[0], g.candidates[-1]]
                    self.r1, self.r2, self.scale = bare
                    base_lo, base_hi = self.group_costs(g.id, others, ends)
                    self.r1, self.r2, self.scale = fitted
                    lo, hi = self.group_costs(g.id, others, ends)
                    if hi - lo < min(base_hi - base_lo, 0.0):
                        return False
            self.r1, self.r2, self.scale = fitted
            uniform = [self.predict(uniform_widths(self.analysis, k)) for k in np.linspace(0.1, 1.0, 10)]
            return bool(np.all(np.diff(uniform) >= 0))
        finally:
            self.r1, self.r2, self.scale = saved

    def phi_share(self, g_id: str, width: int) -> float:
        """Group `g_id`'s part of `phi` at `width` (phi is separable over groups)."""
        act = sum(la.output_numel for la in self.analysis.layers if la.out_group == g_id)
        return act * width / self.sizes[g_id] / self._act_total

    def group_costs(self, g_id: str, widths: dict[str, int], candidates: list[int]) -> np.ndarray:
        """Latency of everything that depends on group `g_id`, at each candidate, others held at `widths`."""
        out = np.zeros(len(candidates))
        touching = [la for la in self.analysis.layers if g_id == la.out_group or g_id in la.in_groups]
        for j, w in enumerate(candidates):
            trial = {**widths, g_id: w}
            out[j] = sum(self.curves[la.name](*self._widths_of(la, trial)) for la in touching)
            out[j] += self.r1 * self.phi_share(g_id, w)
        return out


#: Keep fractions of the uniform plans the remainder is calibrated on before any plan is chosen, spread over
#: the range budgets land in: one dense point cannot tell a fixed per-call cost from one that scales, and
#: activations (~ keep) and weights (~ keep^2) scale differently, so three widths separate R0, R1 and R2.
CALIBRATION_KEEPS = (0.85, 0.55, 0.3)


#: Keep fractions of one more calibration plan, not uniform: the earlier half of the groups at the first, the
#: later half at the second. Along the uniform path the activations kept (phi, ~keep), the weights kept (psi,
#: ~keep^2) and the layer sum grow together, so three uniform plans fit a remainder in any of them about
#: equally well, and that arbitrary choice decides what a non-uniform plan costs. Early groups hold most of
#: the activations and late ones most of the weights, so this plan moves phi and psi apart. Without it, fits
#: on the uniform plans over-predicted the pipeline's (non-uniform) pruned plans on `cpu`: +17% MobileNetV2
#: and +15% ResNet-18 at batch 1 (benchmarks/results/prediction.md, 2026-11-22), up to +69% on a slow day.
SPLIT_KEEPS = (0.3, 0.85)


def uniform_widths(analysis: GroupAnalysis, keep: float) -> dict[str, int]:
    """Every group at the candidate width nearest `keep` x its size."""
    return {g.id: min(g.candidates, key=lambda c: abs(c - keep * g.size)) for g in analysis.groups}


def calibration_plans(analysis: GroupAnalysis) -> list[dict[str, int]]:
    """The plans the remainder is calibrated on: uniform at each of CALIBRATION_KEEPS, then (with two or more
    groups) the split plan of SPLIT_KEEPS, groups ordered by the first layer that writes them."""
    plans = [uniform_widths(analysis, k) for k in CALIBRATION_KEEPS]
    if len(analysis.groups) < 2:
        return plans
    first = {}
    for i, la in enumerate(analysis.layers):
        first.setdefault(la.out_group, i)
    ordered = sorted(analysis.groups, key=lambda g: first.get(g.id, len(analysis.layers)))
    early, late = (uniform_widths(analysis, k) for k in SPLIT_KEEPS)
    half = len(ordered) // 2
    plans.append({g.id: (early if i < half else late)[g.id] for i, g in enumerate(ordered)})
    return plans


def _layouts(node) -> list:
    """The kernel as profiled, and for a conv also read as channels-last (int8 graphs run NHWC in ORT)."""
    return [node, node.channels_first()] if node.is_conv and hasattr(node, "channels_first") else [node]


def _matches(n, shape, c_in: int, c_out: int, conv: bool) -> bool:
    """Kernel `n` runs a layer of input `shape` at widths c_in -> c_out (channels maybe padded, CHANNEL_BLOCKS)."""
    if n.is_conv != conv or len(n.input_shape) != len(shape):
        return False
    axis = 1 if conv else -1
    ins = list(n.input_shape)
    if not (_same_width(c_in, ins[axis], conv) and _same_width(c_out, n.output_shape[axis], conv)):
        return False
    ins[axis] = shape[axis]
    return tuple(ins) == tuple(shape)
