"""The hardware budget method: channel widths chosen by a knapsack over measured costs, in a closed loop.

groups -> importance -> latency table -> remainder calibration -> allocate (hw: knapsack refined on the
joint loss after short fine-tuning) -> apply -> measure -> refit -> re-aim (pipeline.loop).
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch.nn as nn

from hwprune.apply.channels import apply_plan, recalibrate_bn
from hwprune.core.budget import format_amount
from hwprune.core.errors import HwpruneError
from hwprune.cost.curves import Profiler
from hwprune.cost.model import CostModel
from hwprune.cost.resources import count, figure_cost_model
from hwprune.evaluate.validate import calibrate
from hwprune.groups.analysis import analyze
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.timing import Estimate, latency_estimate, ratio_estimate
from hwprune.importance import compute_scores, normalized
from hwprune.pipeline.checks import trust
from hwprune.pipeline.context import METHODS, Outcome, Run
from hwprune.pipeline.loop import ClosedLoop, Constraint, exact
from hwprune.pipeline.sensitivity import LossProbe, group_sensitivity, refine_by_loss
from hwprune.plan.allocate import Problem, allocate_constrained, get_allocator, trust_region
from hwprune.plan.plan import make_plan
from hwprune.report.schema import GroupWidth, TableBuild

#: Distillation steps (batches of 64) each candidate plan gets before its loss steers the hw allocator
#: (NetAdapt's short-term fine-tuning, Yang et al. 2018).
SHORT_FINETUNE_STEPS = 20
#: Vector units and tensor cores run channel counts that are multiples of this at full speed (8 fp16 lanes
#: per tensor-core fragment row; AVX-512 fp32 is 16, AVX2 8); a misaligned narrowest plan can be the slowest.
ALIGN = 8


def _latency_table(run: Run, analysis):
    """The measured per-layer table (cached) and what the report says about building it."""
    t0 = time.perf_counter()
    cache = LatencyCache(run.cfg.target.cache)
    profiler = Profiler(run.target, cache, run.progress)
    curves = profiler.build(analysis)
    seconds = time.perf_counter() - t0
    run.stages["latency_table_s"] = seconds
    table = TableBuild(
        entries_measured=profiler.measured,
        cache_hits=profiler.reused,
        seconds=seconds,
        cache=str(cache.path),
        device_key=profiler.device,
    )
    return CostModel(analysis, curves), table


def _calibrate_remainder(run: Run, cost: CostModel, scores, t_dense: float) -> None:
    """Before the first plan is chosen: the dense model's in-graph layer times where the target has them, and
    the calibration plans (three uniform, one split) measured with the dense model, so the remainder's fixed
    and width-dependent parts are both fitted (cost.calibration_plans)."""
    cost.add_measurement(cost.dense_widths(), t_dense)
    profile = getattr(run.target, "in_graph_times", None)
    if profile is not None:
        cost.add_in_graph(cost.dense_widths(), [n.at(t_dense) for n in profile(run.dense, run.example)])
    calibrate(cost, run.dense, run.example, scores, run.target, t_dense)


def _constraints(run: Run, analysis, cost, scores, t_dense: float) -> list[Constraint]:
    out = []
    for b in run.budgets:
        if b.kind == "latency":
            _calibrate_remainder(run, cost, scores, t_dense)
            out.append(Constraint.latency(b, cost, t_dense))
        else:
            fc = figure_cost_model(b.kind, analysis, run.dense, run.example, run.target)
            out.append(Constraint.counted(b, fc, count(b.kind, run.dense, run.example, run.target)))
    for c in out:
        run.log(
            f"dense {c.kind} {format_amount(c.kind, c.dense)}; budget {c.budget.describe()} = "
            f"{format_amount(c.kind, c.limit)}"
        )
    return out


def _allocate(allocator, plain, problem: Problem, constraints: list[Constraint]) -> dict[str, int]:
    """One allocation against every constraint's aim (one constraint: the allocator as it is)."""
    if len(constraints) == 1:
        c = constraints[0]
        return allocator(replace(problem, cost=c.cost), c.aim)
    costs, aims = [c.cost for c in constraints], [c.aim for c in constraints]
    widths, surrogate = allocate_constrained(plain, problem, costs, aims)
    if allocator is plain:
        return widths
    refined = allocator(surrogate, 1.0)
    ok = all(c.cost.predict(refined) <= c.aim for c in constraints)
    return refined if ok else widths


def _loss_refined(run: Run, plain, problem: Problem, analysis, scores, bn_batches, eval_batches):
    """hw with measured sensitivity: the knapsack's answer, refined on the joint loss within the trust region."""
    one_shot = LossProbe(run.dense, run.example, analysis, scores, bn_batches, eval_batches, run.loss_fn)
    problem.widths_value = group_sensitivity(one_shot, analysis, progress=run.progress)
    short_ft = run.data.calibration(SHORT_FINETUNE_STEPS, seed=run.cfg.seed + 1)
    probe = LossProbe(
        run.dense,
        run.example,
        analysis,
        scores,
        bn_batches,
        eval_batches,
        run.loss_fn,
        train_batches=short_ft,
        lr=run.cfg.finetune.lr,  # the user's fine-tuning rate: a pretrained transformer wants far less than 1e-3
    )
    uniform = get_allocator("uniform")

    def allocator(problem, aim):
        starts = [plain(problem, aim), uniform(problem, aim)]
        return refine_by_loss(trust_region(problem, aim), probe, starts, aim)

    return allocator


def _check_feasible(problem, constraints, build, measure, min_keep: float) -> None:
    """Is any plan feasible? The narrowest plan, and the narrowest with every width a multiple of ALIGN
    (misaligned widths run slower on GPUs and vector units), measured once each, settle it."""
    # Always measured, not predicted: a remainder fitted far below the layer sum can predict the narrowest
    # plan at 0 s, and an impossible budget (latency=1us) then ran all its iterations before failing.
    narrow = problem.min_widths()
    aligned = {g: next((w for w in cands if w % ALIGN == 0), cands[0]) for g, cands in problem.candidates.items()}
    best: list[float] | None = None
    for widths in [narrow] + ([aligned] if aligned != narrow else []):
        figures = [m.value for m in measure(build(widths))]
        if all(m <= c.limit for c, m in zip(constraints, figures, strict=True)):
            return
        best = figures if best is None else [min(a, b) for a, b in zip(best, figures, strict=True)]
    for c, m in zip(constraints, best, strict=True):
        if m > c.limit:
            raise HwpruneError(
                f"budget {c.budget.text} ({format_amount(c.kind, c.limit)}) cannot be met: the narrowest plan "
                f"(every group at {min_keep:.0%}, or at its smallest multiple of {ALIGN}) has {c.kind} "
                f"{format_amount(c.kind, m)}; raise the budget or lower --min-keep"
            )


def _measurer(run: Run, constraints: list[Constraint], t_dense: float):
    """Each constraint's figure of a pruned model: latency interleaved with the dense model, as the per-round
    ratio x the dense latency at planning (relative budgets) or the pruned model's own latency (absolute),
    with 95% intervals; counts exact. Every dense median goes into `run.dense_medians` (the machine's drift)."""

    def measure(pruned: nn.Module) -> list[Estimate]:
        out = []
        for c in constraints:
            if c.kind != "latency":
                out.append(exact(count(c.kind, pruned, run.example, run.target)))
                continue
            td, tp_ = run.target.time_models([run.dense, pruned], run.example)
            run.dense_medians.append(td.median)
            out.append(ratio_estimate(tp_, td).scaled(t_dense) if c.budget.relative else latency_estimate(tp_))
        return out

    return measure


@METHODS.register("budget")
def budget_method(run: Run) -> Outcome:
    """Channel widths under every budget, measured on the target (the default method)."""
    cfg, lp = run.cfg, run.cfg.loop
    latency_budget = next((b for b in run.budgets if b.kind == "latency"), None)
    t0 = time.perf_counter()
    ignored = [p.strip() for p in (lp.ignore or "").split(",") if p.strip()]
    analysis = analyze(run.dense, run.example, lp.min_keep, ignored=ignored)
    calib = run.calibration(2 * lp.calib_batches if run.data is not None else lp.calib_batches, cfg.seed)
    # With data: the first half re-estimates BN statistics and scores channels; the disjoint second half
    # measures the losses that steer the allocation. A user's loader may hold fewer batches than asked for:
    # it is then split in two halves (one batch: used for both, rather than steering on an empty loss).
    half = min(lp.calib_batches, max(1, len(calib) // 2))
    calib, eval_batches = (calib[:half], calib[half:] or calib[:half]) if run.data else (calib, calib)
    scores = compute_scores(run.dense, analysis, run.criterion, calib, seed=cfg.seed, loss_fn=run.loss_fn)
    value_mode = lp.value if lp.value != "auto" else ("sensitivity" if run.data is not None else "scores")
    bn_batches = calib if run.data is not None else []  # real data: every plan's BN statistics re-estimated
    run.stages["groups_importance_s"] = time.perf_counter() - t0

    cost, table = _latency_table(run, analysis) if latency_budget is not None else (None, None)
    t0 = time.perf_counter()
    t_dense = run.target.time_models([run.dense], run.example)[0].median
    constraints = _constraints(run, analysis, cost, scores, t_dense)
    plain = get_allocator(lp.allocator)
    problem = Problem(
        constraints[0].cost,
        {g.id: g.candidates for g in analysis.groups},
        normalized(scores, run.criterion),
        trust=trust(cfg),
    )
    allocator = plain
    if value_mode == "sensitivity" and lp.allocator == "hw":
        allocator = _loss_refined(run, plain, problem, analysis, scores, bn_batches, eval_batches)
    sizes = cost.sizes if cost else constraints[0].cost.sizes

    def build(widths):
        plan = make_plan(
            widths,
            scores,
            sizes,
            analysis.multiples,
            units=analysis.units,
            allocator=lp.allocator,
            criterion=run.criterion,
            budget=cfg.budget,
            predicted_latency_s=cost.physical(widths) if cost else None,
        )
        return plan, recalibrate_bn(apply_plan(run.dense, run.example, plan), bn_batches)

    measure = _measurer(run, constraints, t_dense)
    loop = ClosedLoop(
        constraints,
        allocate=lambda: _allocate(allocator, plain, problem, constraints),
        build=build,
        measure=lambda built: measure(built[1]),
        value=lambda widths: sum(problem.value(g, w) for g, w in widths.items()),
        max_iters=lp.max_iters,
        on_first_miss=lambda: _check_feasible(problem, constraints, build, lambda b: measure(b[1]), lp.min_keep),
        log=run.log,
        progress=run.progress,
    )
    best = loop.run()
    plan, pruned = best.model
    run.stages["allocation_loop_s"] = time.perf_counter() - t0
    predicted = cost.physical(best.widths) if cost else None
    sections = {
        "settings": {
            "value": value_mode if lp.allocator == "hw" else None,
            "trust": trust(cfg),
            "bn_recalibration": bool(bn_batches),
        },
        "t_plan": t_dense,
        "predicted_s": predicted,
        "latency_table": table,
        "loop": loop.history,
        "groups": [GroupWidth(id=g.id, size=g.size, width=g.width) for g in plan.groups],
        "dense_figures": {c.kind: c.dense for c in constraints},
    }
    return Outcome(pruned, plan, run.score(pruned), sections=sections)
