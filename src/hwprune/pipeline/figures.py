"""The report's measured part, the same for every method: final latency (interleaved with the dense model),
counts, the task metric, and each budget's row."""

from __future__ import annotations

import os

import torch

from hwprune.core.budget import Budget
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import macs_params, size_bytes
from hwprune.cost.cached import NotCached, read_curves
from hwprune.cost.curves import STEP_TOLERANCE
from hwprune.cost.model import CostModel
from hwprune.cost.resources import count, memory_bytes
from hwprune.groups.analysis import analyze
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.timing import Estimate, Timing, latency_estimate, ratio_estimate
from hwprune.pipeline.context import Run
from hwprune.pipeline.loop import exact
from hwprune.report.schema import BudgetRow, Headline, Latency, Measurement, ModelFigures, Staircase

#: Groups whose measured staircase the report draws: the costliest ones (their layers' table time at dense).
STAIRCASES = 6

MET_CONFIDENT = "met (95% confidence)"
MET_MEDIAN = "met on the median only"
NOT_MET = "not met"
_ORDER = {NOT_MET: 0, MET_MEDIAN: 1, MET_CONFIDENT: 2}


def verdict(limit: float, value: float, high: float) -> str:
    """Met when the interval's upper end is within the limit; on the median only when just the median is."""
    if high <= limit:
        return MET_CONFIDENT
    return MET_MEDIAN if value <= limit else NOT_MET


def budget_row(budget: Budget, dense_figure: float, final: Estimate) -> BudgetRow:
    """One budget's line in the report: limit, dense and pruned figures with the interval, the verdict."""
    limit = budget.limit(dense_figure)
    v = verdict(limit, final.value, final.high)
    return BudgetRow(
        kind=budget.kind,
        text=budget.text,
        relative=budget.relative,
        value=budget.value,
        limit=limit,
        dense=dense_figure,
        pruned=final.value,
        met=v != NOT_MET,
        used=final.value / limit,
        low=final.low,
        high=final.high,
        verdict=v,
    )


def _head(rows: list[BudgetRow], text: str | None) -> Headline:
    """The headline budget: latency's when there is one, else the one closest to its limit; the verdict is
    the weakest of all rows'."""
    head = next((r for r in rows if r.kind == "latency"), None) or max(rows, key=lambda r: r.used, default=None)
    weakest = min((r.verdict for r in rows), key=_ORDER.__getitem__, default=MET_CONFIDENT)
    return Headline(
        text=text,
        kind=head.kind if head else None,
        relative=head.relative if head else None,
        value=head.value if head else None,
        seconds=head.limit if head and head.kind == "latency" else None,
        met=all(r.met for r in rows),
        used=head.used if head else None,
        verdict=weakest if rows else "no budget",
    )


def _latency(timing: Timing) -> Latency:
    e = latency_estimate(timing)
    return Latency(**timing.to_dict(), ci_low_ms=e.low * 1e3, ci_high_ms=e.high * 1e3, stopped=timing.stopped)


def _model_figures(run: Run, model, timing, energy: bool) -> ModelFigures:
    macs, params = macs_params(model, run.example)
    return ModelFigures(
        latency=_latency(timing),
        macs=macs,
        params=params,
        size_bytes=size_bytes(model),
        memory_bytes=memory_bytes(model, run.example),
        energy_j=run.target.model_energy(model, run.example) if energy else None,
        accuracy=run.score(model),
    )


def _timing_mode(target) -> str:
    """ "fast" when the target timed with the test-only 3-call protocol (HWPRUNE_TIMING=fast)."""
    mode = target.fingerprint().get("timing")
    return mode or ("fast" if os.environ.get("HWPRUNE_TIMING") == "fast" else "standard")


def _tolerance(target) -> float | None:
    protocol = getattr(target, "protocol", None)
    return protocol(final=True).tolerance if protocol is not None else None


def final_figures(run: Run, pruned, t_plan: float, dense_figures: dict) -> dict:
    """Latency is put on the scale of the dense latency measured when planning (`t_plan`): the final
    interleaved pruned/dense ratio (median of the per-round ratios, with its 95% interval) x t_plan, so
    drift of the machine's speed between the two cancels. `dense_figures[kind]`: the dense model's figure
    each budget was planned against. Returns the measured fields of `report.schema.Report`."""
    pruned.eval()
    dense, example, target = run.dense, run.example, run.target
    td, tp_ = target.time_models([dense, pruned], example, final=True)
    run.dense_medians.append(td.median)
    r = ratio_estimate(tp_, td)
    final = r.scaled(t_plan)
    rows = []
    for b in run.budgets:
        if b.kind == "latency":
            rows.append(budget_row(b, t_plan, final if b.relative else latency_estimate(tp_)))
        else:
            rows.append(budget_row(b, dense_figures[b.kind], exact(count(b.kind, pruned, example, target))))
    energy = hasattr(target, "model_energy")
    d, p = _model_figures(run, dense, td, energy), _model_figures(run, pruned, tp_, energy)
    return {
        "fingerprint": target.fingerprint(),
        "timing": _timing_mode(target),
        "input_shape": list(example.shape) if isinstance(example, torch.Tensor) else None,
        "budget": _head(rows, run.cfg.budget),
        "budgets": rows,
        "dense": d,
        "pruned": p,
        "speedup": 1.0 / r.value,
        "speedup_ci": [1.0 / r.high, 1.0 / r.low],
        "latency_ratio": r.value,
        "latency_ratio_ci": [r.low, r.high],
        "measurement": Measurement(
            rounds=r.n,
            half_width=r.half_width,
            tolerance=_tolerance(target),
            stopped=td.stopped,
            estimator=r.estimator,
            confidence=r.confidence,
        ),
        "macs_ratio": p.macs / d.macs if d.macs else None,
        "compression": p.size_bytes / d.size_bytes,
        "dense_latency_at_planning_ms": t_plan * 1e3,
        "measured_latency_ms": final.value * 1e3,
        "measured_latency_ci_ms": [final.low * 1e3, final.high * 1e3],
        "staircases": staircases(run, pruned),
    }


def staircases(run: Run, pruned, n: int = STAIRCASES) -> list[Staircase]:
    """For a budget run with a latency budget: the `n` costliest groups' latency over width, read back from
    the latency table the run measured (nothing is timed here; a table entry that is missing, e.g. the cache
    was removed meanwhile, leaves the report without staircases)."""
    if run.cfg.method.selection != "budget" or not any(b.kind == "latency" for b in run.budgets):
        return []
    lp = run.cfg.loop
    ignored = [p.strip() for p in (lp.ignore or "").split(",") if p.strip()]
    try:
        analysis = analyze(run.dense, run.example, lp.min_keep, ignored=ignored)
        cost = CostModel(analysis, read_curves(run.target, LatencyCache(run.cfg.target.cache), analysis))
    except (NotCached, HwpruneError):
        return []
    mods = dict(pruned.named_modules())
    chosen = {}
    for g in analysis.groups:
        m = mods.get(g.id)
        w = getattr(m, "out_channels", getattr(m, "out_features", None))
        if w is not None:
            chosen[g.id] = int(w)
    dense = cost.dense_widths()
    widths = {**dense, **{g: w for g, w in chosen.items() if g in dense}}
    rows = []
    for g in analysis.groups:
        if g.id not in chosen:
            continue
        cands = sorted(set(g.candidates) | {g.size})
        ms = cost.group_costs(g.id, widths, cands) * 1e3  # bare table: no fitted remainder (scale 1, r1 = 0)
        steps = [w for w, a, b in zip(cands[1:], ms[:-1], ms[1:], strict=False) if b - a > STEP_TOLERANCE * ms[-1]]
        rows.append(Staircase(g.id, g.size, chosen[g.id], cands, [round(float(x), 5) for x in ms], steps))
    return sorted(rows, key=lambda r: -r.ms[-1])[:n]
