"""The report's measured part, the same for every method: final latency (interleaved with the dense model),
counts, the task metric, and each budget's row."""

from __future__ import annotations

import torch

from hwprune.core.budget import Budget
from hwprune.core.modules import macs_params, size_bytes
from hwprune.cost.resources import count, memory_bytes
from hwprune.hardware.timing import ratio
from hwprune.pipeline.context import Run
from hwprune.report.schema import BudgetRow, Headline, Latency, ModelFigures


def budget_row(budget: Budget, dense_figure: float, final: float, met: bool | None = None) -> BudgetRow:
    """One budget's line in the report: limit, dense and pruned figures, met, share used."""
    limit = budget.limit(dense_figure)
    return BudgetRow(
        kind=budget.kind,
        text=budget.text,
        relative=budget.relative,
        value=budget.value,
        limit=limit,
        dense=dense_figure,
        pruned=final,
        met=bool(final <= limit if met is None else met),
        used=final / limit,
    )


def _head(rows: list[BudgetRow], text: str | None) -> Headline:
    """The headline budget: latency's when there is one, else the one closest to its limit."""
    head = next((r for r in rows if r.kind == "latency"), None) or max(rows, key=lambda r: r.used, default=None)
    return Headline(
        text=text,
        kind=head.kind if head else None,
        relative=head.relative if head else None,
        value=head.value if head else None,
        seconds=head.limit if head and head.kind == "latency" else None,
        met=all(r.met for r in rows),
        used=head.used if head else None,
    )


def _model_figures(run: Run, model, timing, energy: bool) -> ModelFigures:
    macs, params = macs_params(model, run.example)
    return ModelFigures(
        latency=Latency(**timing.to_dict()),
        macs=macs,
        params=params,
        size_bytes=size_bytes(model),
        memory_bytes=memory_bytes(model, run.example),
        energy_j=run.target.model_energy(model, run.example) if energy else None,
        accuracy=run.score(model),
    )


def final_figures(run: Run, pruned, t_plan: float, dense_figures: dict) -> dict:
    """Latency is put on the scale of the dense latency measured when planning (`t_plan`): the final
    interleaved pruned/dense ratio x t_plan, so drift of the machine's speed between the two cancels.
    `dense_figures[kind]`: the dense model's figure each budget was planned against. Returns the
    measured fields of `report.schema.Report`."""
    pruned.eval()
    dense, example, target = run.dense, run.example, run.target
    td, tp_ = target.time_models([dense, pruned], example, final=True)
    final_ratio = ratio(tp_, td)
    final_s = final_ratio * t_plan
    rows = []
    for b in run.budgets:
        if b.kind == "latency":
            final = final_s if b.relative else tp_.median
            rows.append(budget_row(b, t_plan, final, final_ratio <= b.value if b.relative else None))
        else:
            rows.append(budget_row(b, dense_figures[b.kind], count(b.kind, pruned, example, target)))
    energy = hasattr(target, "model_energy")
    d, p = _model_figures(run, dense, td, energy), _model_figures(run, pruned, tp_, energy)
    return {
        "fingerprint": target.fingerprint(),
        "input_shape": list(example.shape) if isinstance(example, torch.Tensor) else None,
        "budget": _head(rows, run.cfg.budget),
        "budgets": rows,
        "dense": d,
        "pruned": p,
        "speedup": 1.0 / final_ratio,
        "latency_ratio": final_ratio,
        "macs_ratio": p.macs / d.macs if d.macs else None,
        "compression": p.size_bytes / d.size_bytes,
        "dense_latency_at_planning_ms": t_plan * 1e3,
        "measured_latency_ms": final_s * 1e3,
    }
