"""Stage 3, measuring: each layer's latency on a sparse grid of widths, from the measured table.

Each layer's latency is measured on a sparse grid of (input width, output width) points and
interpolated between them. The output-width axis is refined by bisection wherever the measured
curve departs from a straight line, so the staircase edges (DESIGN.md) are found without timing
every width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwprune.cost.progress import Stage
from hwprune.groups.analysis import GroupAnalysis, LayerInfo
from hwprune.hardware.table import LatencyCache

#: A refinement point is measured when an interval spans more than one candidate width; it is split
#: further while the midpoint is off the straight line by more than this fraction (a step edge).
STEP_TOLERANCE = 0.05
#: Out-width points measured per layer before refinement, in-width rows per layer.
OUT_SAMPLES = 7
IN_SAMPLES = 3
MAX_REFINE = 8
#: An entry this many times dearer than a wider width of the same layer is re-measured (see Profiler._repair).
OUTLIER = 1.5


def spread(cands: list[int], n: int) -> list[int]:
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
        # Entries this run measured, and those it found that an earlier run wrote: a layer asks for some
        # entries twice, so counting cache hits would count reuse twice.
        self._mine: set[tuple] = set()
        self._found: set[tuple] = set()

    @property
    def reused(self) -> int:
        """Distinct entries found in the cache that an earlier run (not this one) measured."""
        return len(self._found)

    def entry(self, layer: LayerInfo, c_in: int, c_out: int, fresh: bool = False) -> float:
        sig = layer.signature()
        key = (sig, c_in, c_out)
        hit = None if fresh else self.cache.get(self.device, sig, c_in, c_out)
        if hit is not None:
            if key not in self._mine:
                self._found.add(key)
            return hit[0]
        mod, x = layer.build(c_in, c_out)
        t = self.target.time_layer(mod, x)
        # Its own transaction (LatencyCache.put): a run killed after this line keeps the entry for the next.
        self.cache.put(self.device, sig, c_in, c_out, t.median, t.iqr, t.n)
        self._mine.add(key)
        self.measured += 1
        if self._bar is not None:
            self._bar.set_postfix(measured=self.measured, cached=self.reused)
        return t.median

    def _row(self, layer, c_in, outs, cands, refine: bool, dw: bool) -> tuple[list[int], list[float]]:
        pts = {o: self.entry(layer, o if dw else c_in, o) for o in outs}
        if refine:
            stack = list(zip(outs[:-1], outs[1:], strict=False))
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
        self._repair(layer, c_in, pts, xs, dw)
        return xs, [pts[x] for x in xs]

    def _repair(self, layer, c_in, pts: dict[int, float], xs: list[int], dw: bool) -> None:
        """Re-measure entries that cost far more than a wider width of the same layer, then clamp.

        A layer's latency is a staircase that rises with its width; an entry OUTLIER x above the cheapest
        wider one was timed during a burst of load (seen here: 68 ms entries for 0.1 ms layers while other
        jobs ran). It is timed again and the new figure replaces it in the table; a figure that is still out
        of line is real (some kernels are slower at misaligned widths) and is kept.
        """
        for i in range(len(xs) - 2, -1, -1):
            wider = min(pts[x] for x in xs[i + 1 :])
            if pts[xs[i]] > OUTLIER * wider:
                x = xs[i]
                pts[x] = self.entry(layer, x if dw else c_in, x, fresh=True)

    def curve(self, layer: LayerInfo, in_cands: list[int], out_cands: list[int]) -> LayerCurve:
        if layer.depthwise:
            xs, ys = self._row(layer, 0, spread(out_cands, OUT_SAMPLES + 2), out_cands, True, True)
            return LayerCurve(xs, xs, np.array([ys]), depthwise=True)
        outs = spread(out_cands, OUT_SAMPLES)
        full_in = max(in_cands)
        outs, top = self._row(layer, full_in, outs, out_cands, len(out_cands) > 2, False)
        ins = sorted(set(spread(in_cands, IN_SAMPLES)))
        rows = {full_in: top}
        for c_in in ins:
            if c_in not in rows:
                rows[c_in] = self._row(layer, c_in, outs, out_cands, False, False)[1]
        # The same check across input widths: a narrower input never costs far more than a wider one.
        for i in range(len(ins) - 2, -1, -1):
            for j, o in enumerate(outs):
                wider = min(rows[c][j] for c in ins[i + 1 :])
                if rows[ins[i]][j] > OUTLIER * wider:
                    rows[ins[i]][j] = self.entry(layer, ins[i], o, fresh=True)
        return LayerCurve(ins, outs, np.array([rows[c] for c in ins]))

    def build(self, analysis: GroupAnalysis) -> dict[str, LayerCurve]:
        """Curves for every timed layer of the model (measuring only what the cache lacks)."""
        cands = {g.id: g.candidates for g in analysis.groups}
        curves: dict[str, LayerCurve] = {}
        memo: dict[tuple, LayerCurve] = {}
        with Stage("latency table", len(analysis.layers), "layer", self.progress) as bar:
            self._bar = bar
            bar.set_postfix(measured=0, cached=0)
            for layer in analysis.layers:
                in_c, out_c = layer_candidates(layer, cands)
                key = (layer.signature(), tuple(in_c), tuple(out_c))
                if key not in memo:
                    memo[key] = self.curve(layer, in_c, out_c)
                curves[layer.name] = memo[key]
                bar.update(1)
                bar.set_postfix(measured=self.measured, cached=self.reused)
            self._bar = None
        return curves


def layer_candidates(layer: LayerInfo, cands: dict[str, list[int]]) -> tuple[list[int], list[int]]:
    """The input and output widths a layer takes as its groups take their candidate widths (a concatenated
    input: its parts at the same rank of their candidates, from all narrowest to all dense)."""
    parts = [(cands[g], n, m) for g, n, m in layer.in_parts if g in cands]
    if parts:
        fixed = layer.in_channels - sum(n for _, n, _ in parts)
        ranks = np.linspace(0.0, 1.0, max(len(c) for c, _, _ in parts))
        in_c = sorted({fixed + sum(c[round(q * (len(c) - 1))] * m for c, _, m in parts) for q in ranks})
    elif layer.in_group in cands:
        in_c = [c * layer.in_mult for c in cands[layer.in_group]]
    else:
        in_c = [layer.in_channels]
    out_c = [c // layer.out_div for c in cands[layer.out_group]] if layer.out_group in cands else [layer.out_channels]
    return in_c, out_c
