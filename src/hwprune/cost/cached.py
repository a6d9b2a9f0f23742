"""The latency table read back without timing anything: the curves a run measured, for the report's staircases
and anything else that redraws a run (`read_curves`)."""

from __future__ import annotations

import numpy as np

from hwprune.cost.curves import LayerCurve, layer_candidates
from hwprune.groups.analysis import GroupAnalysis, LayerInfo
from hwprune.hardware.table import LatencyCache


class NotCached(LookupError):
    """A layer the latency table holds no entries for (this device's)."""


def read_curves(target, cache: LatencyCache, analysis: GroupAnalysis) -> dict[str, LayerCurve]:
    """Every timed layer's curve from the entries `cache` holds for `target`'s device; NotCached when a layer
    has none."""
    table: dict[str, dict[tuple[int, int], float]] = {}
    for e in cache.entries(target.device_key()):
        table.setdefault(e.signature, {})[(e.cin, e.cout)] = e.median
    cands = {g.id: g.candidates for g in analysis.groups}
    curves = {}
    for layer in analysis.layers:
        in_c, out_c = layer_candidates(layer, cands)
        curves[layer.name] = cached_curve(table.get(layer.signature(), {}), layer, in_c, out_c)
    return curves


def cached_curve(table: dict[tuple[int, int], float], layer: LayerInfo, in_cands, out_cands) -> LayerCurve:
    """The layer's curve from every entry `table` (its signature's entries, (cin, cout) -> s) holds at these
    candidate widths: what a run measured, whichever refinement path it took (a re-measured outlier changes
    the path, so replaying `Profiler.curve` may ask for points never measured). Rows are interpolated onto
    the union of their output widths."""
    pts = table
    ins_ok = set(in_cands)
    outs_ok = set(out_cands)
    if layer.depthwise:
        row = sorted((co, t) for (ci, co), t in pts.items() if ci == co and co in outs_ok)
        if not row:
            raise NotCached(f"{layer.signature()}: no entries in the latency table")
        xs = [x for x, _ in row]
        return LayerCurve(xs, xs, np.array([[t for _, t in row]]), depthwise=True)
    rows: dict[int, dict[int, float]] = {}
    for (ci, co), t in pts.items():
        if ci in ins_ok and co in outs_ok:
            rows.setdefault(ci, {})[co] = t
    need = 2 if len(out_cands) > 1 else 1
    rows = {ci: r for ci, r in rows.items() if len(r) >= need}
    if not rows:
        raise NotCached(f"{layer.signature()}: no entries in the latency table")
    ins = sorted(rows)
    outs = sorted(set().union(*rows.values()))
    grid = [np.interp(outs, sorted(rows[ci]), [rows[ci][o] for o in sorted(rows[ci])]) for ci in ins]
    return LayerCurve(ins, outs, np.array(grid))
