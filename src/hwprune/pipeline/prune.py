"""The pipeline: groups -> importance -> cost -> plan (closed loop) -> apply -> finetune -> evaluate.

The closed loop: the allocator aims the *predicted* latency at a target; the plan is applied and the
real model is timed (interleaved with the dense model for relative budgets); the remainder model is
refitted, the target is corrected by measured/goal, and this repeats until a plan's measured latency
lands in [ACCEPT_LOW, ACCEPT_HIGH] x budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn as nn

from hwprune.apply.channels import apply_plan, recalibrate_bn
from hwprune.core.budget import Budget, format_amount, parse_budgets
from hwprune.core.data import Dataset
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call, macs_params, size_bytes
from hwprune.cost.model import CostModel, Profiler
from hwprune.cost.resources import FigureTarget, count, figure_cost_model, memory_bytes
from hwprune.evaluate.metrics import accuracy
from hwprune.evaluate.validate import calibrate
from hwprune.groups.analysis import analyze
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.targets import get_target
from hwprune.hardware.timing import ratio
from hwprune.importance.criteria import compute_scores, get_criterion, normalized
from hwprune.pipeline.sensitivity import LossProbe, group_sensitivity, refine_by_loss
from hwprune.plan.allocate import TRUST, Problem, allocate_constrained, get_allocator, trust_region
from hwprune.plan.plan import Plan, make_plan
from hwprune.zoo.datasets import get_dataset
from hwprune.zoo.specs import ResolvedModel, resolve

#: Aim the measured latency at 91% of the budget. The interleaved pruned/dense ratio of the same two
#: models moved by up to 4.6% between the loop's measurement and the final one minutes later on this
#: 2-core machine (demo, 0.479 -> 0.4996; MNIST-1D at budget 0.15, a 1.7 ms model, 0.965 -> 1.01 of
#: budget), so the loop accepts at most 95% of the budget.
GOAL = 0.91
#: Accept a plan whose measured latency is within this band of the budget. The lower edge is above
#: the 85% the core issue asks for: a plan far under budget throws accuracy away.
ACCEPT_LOW, ACCEPT_HIGH = 0.87, 0.95
#: The loop re-aims by (goal x limit / measured) ** LATENCY_GAIN after each measured plan. A full correction
#: (1) chased the noise: at 0.15 on the demo, a plan measured at 70% of the budget sent the next aim above the
#: limit and that plan measured 119%. Half the correction (in log terms) still converges on a steady misfit
#: of the cost model (the correction accumulates over iterations) while halving the jump a single noisy
#: figure causes (benchmarks/results/noise.md: 9-11% coefficient of variation for a 2 ms plan).
LATENCY_GAIN = 0.5
#: Counted figures (memory, params, MACs, energy) are exact, so the loop aims at the limit itself and
#: accepts a plan at 97-100% of it (width steps of 8 channels rarely land closer).
COUNT_ACCEPT_LOW = 0.97
#: Distillation steps (batches of 64) each candidate plan gets before its loss steers the hw allocator.
SHORT_FINETUNE_STEPS = 20


@dataclass
class PruneConfig:
    """Everything `hwprune prune` takes; plain data, so it round-trips to JSON in the report."""

    model: str
    budget: str | None = None  # default latency=0.5 with selection budget; otherwise only reported when given
    batch_size: int = 1
    input_shape: str | None = None
    criterion: str | None = None  # default: taylor with --data, else l1
    allocator: str = "hw"
    value: str = "auto"  # what hw maximises: sensitivity (measured loss; default with --data) or scores
    #: hw keeps widths within [trust, 1/trust] x the uniform plan's (0: anywhere). Default: TRUST when the
    #: plan is fine-tuned (a floor-width layer fine-tunes worst), 0 when it is not (one-shot, the unrestricted
    #: knapsack keeps the most accuracy: benchmarks/results/allocators.md).
    trust: float | None = None
    data: str | None = None
    finetune_epochs: int = 0
    lr: float = 1e-3
    target: str = "cpu"
    threads: int | None = None
    seed: int = 0
    min_keep: float = 0.1
    max_iters: int = 8
    calib_batches: int = 8
    cache: str | None = None
    # Methods (issue 4): see methods.py. The defaults are the hardware-budget path.
    granularity: str = "channel"  # channel | head | block | unstructured | N:M (2:4) | block-sparse (block4x1)
    selection: str = "budget"  # budget | ratio | threshold | mean-threshold | hierarchical
    sparsity: float | None = None  # fraction of units (weights at weight level) to remove
    scope: str = "layer"  # ratio per layer or global
    threshold: float | None = None  # selection threshold; initial threshold of threshold-decay
    decay: float = 0.5  # threshold-decay: factor per round
    schedule: str = "one-shot"  # one-shot | iterative | gradual | threshold-decay
    rounds: int = 3  # iterative / gradual (unit level) / threshold-decay rounds
    criterion_params: dict | None = None  # e.g. {"lambda": 0.5} for redundancy

    def __post_init__(self):
        from hwprune.pipeline.methods import SCHEDULES, parse_granularity
        from hwprune.plan.select import get_selection

        if self.budget is None and self.selection == "budget":
            self.budget = "latency=0.5"
        get_selection(self.selection)
        kind, pattern = parse_granularity(self.granularity)
        if self.schedule not in SCHEDULES:
            raise HwpruneError(f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}")
        if self.selection == "budget" and (kind != "channel" or self.schedule != "one-shot"):
            raise HwpruneError(
                "--selection budget (the hardware allocator) plans channel widths in one shot; for "
                f"--granularity {self.granularity} / --schedule {self.schedule} use --selection ratio with --sparsity"
            )
        if (
            self.selection in ("ratio", "hierarchical")
            and self.sparsity is None
            and not (pattern and pattern.kind == "nm")
        ):
            raise HwpruneError(f"--selection {self.selection} needs --sparsity F (the fraction of units to remove)")
        if self.trust is None:
            self.trust = TRUST if self.finetune_epochs > 0 else 0.0
        if not 0 <= self.trust <= 1:
            raise HwpruneError(f"--trust {self.trust}: must be in [0, 1] (0: no trust region, 1: the uniform plan)")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise HwpruneError(f"--sparsity {self.sparsity}: the fraction to remove must be in [0, 1)")
        if (self.selection == "threshold" or self.schedule == "threshold-decay") and self.threshold is None:
            raise HwpruneError("--selection threshold and --schedule threshold-decay need --threshold T")
        if self.schedule == "threshold-decay" and not 0 < self.decay <= 1:
            raise HwpruneError("--decay must be in (0, 1]")
        if self.schedule in ("iterative", "gradual") and self.selection not in ("ratio",):
            raise HwpruneError(f"--schedule {self.schedule} ramps a --sparsity: use it with --selection ratio")
        if self.rounds < 1:
            raise HwpruneError("--rounds must be at least 1")
        if self.scope not in ("layer", "global"):
            raise HwpruneError("--scope must be layer or global")
        if self.finetune_epochs < 0:
            raise HwpruneError("--finetune-epochs must be 0 or more")
        if self.finetune_epochs > 0 and not self.data:
            raise HwpruneError("--finetune-epochs needs --data (fine-tuning trains on it)")
        if not 0 < self.min_keep <= 1:
            raise HwpruneError("--min-keep must be in (0, 1]")
        if self.max_iters < 1:
            raise HwpruneError("--max-iters must be at least 1")
        get_allocator(self.allocator)
        if self.value not in ("auto", "scores", "sensitivity"):
            raise HwpruneError("--value must be auto, scores or sensitivity")
        if self.value == "sensitivity" and not self.data:
            raise HwpruneError("--value sensitivity measures calibration loss: it needs --data")
        if self.criterion:
            get_criterion(self.criterion)


@dataclass
class Constraint:
    """One budget in the closed loop: its predicted figure for any widths, the limit and the current aim.

    `goal` places the aim under the limit (measured latency is noisy; counts are not); a plan is accepted
    when every figure is <= `high` x limit and at least one is >= `low` x limit (the plan is tight).
    """

    budget: Budget
    cost: CostModel
    dense: float
    goal: float
    low: float
    high: float
    #: How much of the last miss the next aim corrects (multiplicatively, as a power): 1 for exact counts.
    gain: float = 1.0

    def __post_init__(self):
        self.kind = self.budget.kind
        self.limit = self.budget.limit(self.dense)
        self.aim = self.limit * self.goal


def _in_band(constraints: list[Constraint], measured: list[float]) -> bool:
    """Every figure within its limit's upper edge, and at least one above its lower edge (the budget used)."""
    pairs = list(zip(constraints, measured))
    return all(m <= c.high * c.limit for c, m in pairs) and any(m >= c.low * c.limit for c, m in pairs)


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


def _calibrate_remainder(cost, dense, example, scores, target, t_dense: float) -> None:
    """Before the first plan is chosen: the dense model's in-graph layer times where the target has them, and
    the calibration plans (three uniform, one split) measured with the dense model, so the remainder's fixed
    and width-dependent parts are both fitted (cost.calibration_plans)."""
    profile = getattr(target, "in_graph_times", None)
    if profile is not None:
        cost.add_in_graph(cost.dense_widths(), [n.at(t_dense) for n in profile(dense, example)])
    calibrate(cost, dense, example, scores, target, t_dense)


#: Vector units and tensor cores run channel counts that are multiples of this at full speed (8 fp16 lanes
#: per tensor-core fragment row; AVX-512 fp32 is 16, AVX2 8); a misaligned narrowest plan can be the slowest.
ALIGN = 8


def _check_feasible(problem, constraints, dense, example, scores, measure, min_keep: float) -> None:
    """Is any plan feasible? The narrowest plan, and the narrowest with every width a multiple of ALIGN
    (misaligned widths run slower on GPUs and vector units), measured once each, settle it."""
    narrow = problem.min_widths()
    if all(c.cost.predict(narrow) <= c.aim for c in constraints):
        return
    aligned = {g: next((w for w in cands if w % ALIGN == 0), cands[0]) for g, cands in problem.candidates.items()}
    best: list[float] | None = None
    for widths in [narrow] + ([aligned] if aligned != narrow else []):
        figures = measure(apply_plan(dense, example, make_plan(widths, scores, constraints[0].cost.sizes)))
        if all(m <= c.limit for c, m in zip(constraints, figures)):
            return
        best = figures if best is None else [min(a, b) for a, b in zip(best, figures)]
    for c, m in zip(constraints, best):
        if m > c.limit:
            raise HwpruneError(
                f"budget {c.budget.text} ({format_amount(c.kind, c.limit)}) cannot be met: the narrowest plan "
                f"(every group at {min_keep:.0%}, or at its smallest multiple of {ALIGN}) has {c.kind} "
                f"{format_amount(c.kind, m)}; raise the budget or lower --min-keep"
            )


@dataclass
class PruneResult:
    model: nn.Module
    dense: nn.Module
    plan: Plan  # or methods.MethodRecord: anything with save(path)
    report: dict
    resolved: ResolvedModel = field(repr=False, default=None)


def _calibration(cfg: PruneConfig, data: Dataset | None, model, example) -> list:
    if data is not None:
        return data.batches(64, 2 * cfg.calib_batches, seed=cfg.seed)
    # No data: random inputs labelled by the dense model's own predictions (self-distillation targets).
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for _ in range(max(1, cfg.calib_batches // 4)):
        x = torch.randn(example.shape, generator=gen) if isinstance(example, torch.Tensor) else example
        with torch.no_grad():
            y = call(model, x).argmax(-1)
        out.append((x, y))
    return out


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, flush=True)


def setup(cfg, budgets: list[Budget], progress: bool):
    """Data, model and target of a run, each checked against the others (one-line errors)."""
    data = get_dataset(cfg.data) if cfg.data else None
    resolved = resolve(cfg.model, cfg.batch_size, cfg.input_shape, progress)
    if data is not None:
        try:
            with torch.no_grad():
                out = resolved.model(data.x_test[:2])
            if out.shape[-1] != data.num_classes:
                raise HwpruneError(
                    f"model outputs {out.shape[-1]} classes, data set '{cfg.data}' has {data.num_classes}"
                )
        except HwpruneError:
            raise
        except Exception as e:
            raise HwpruneError(
                f"--data {cfg.data} (samples of shape {data.sample_shape}) does not fit {cfg.model}: "
                f"{str(e).splitlines()[0][:160]}"
            ) from None
    target = get_target(cfg.target, threads=cfg.threads)
    if any(b.kind == "energy" for b in budgets):
        FigureTarget("energy", target)  # fails early, in one line, when the target has no energy model
    return data, resolved, target


def budget_row(budget: Budget, dense_figure: float, final: float, met: bool | None = None) -> dict:
    """One budget's line in the report: limit, dense and pruned figures, met, share used."""
    limit = budget.limit(dense_figure)
    return {
        "kind": budget.kind,
        "text": budget.text,
        "relative": budget.relative,
        "value": budget.value,
        "limit": limit,
        "dense": dense_figure,
        "pruned": final,
        "met": bool(final <= limit if met is None else met),
        "used": final / limit,
    }


def final_figures(
    dense, pruned, example, target, data, t_plan: float, budgets: list[Budget], budget_text, dense_figures
):
    """The report's measured part: interleaved final latency, counts, accuracy, and every budget's row.

    Latency is put on the scale of the dense latency measured when planning (`t_plan`): the final
    interleaved pruned/dense ratio x t_plan, so drift of the machine's speed between the two cancels.
    `dense_figures[kind]`: the dense model's figure each budget was planned against.
    """
    pruned.eval()
    td, tp_ = target.time_models([dense, pruned], example, final=True)
    final_ratio = ratio(tp_, td)
    final_s = final_ratio * t_plan
    macs_d, params_d = macs_params(dense, example)
    macs_p, params_p = macs_params(pruned, example)
    size_d, size_p = size_bytes(dense), size_bytes(pruned)
    rows = []
    for b in budgets:
        if b.kind == "latency":
            final = final_s if b.relative else tp_.median
            rows.append(budget_row(b, t_plan, final, final_ratio <= b.value if b.relative else None))
        else:
            rows.append(budget_row(b, dense_figures[b.kind], count(b.kind, pruned, example, target)))
    energy = hasattr(target, "model_energy")
    # The headline budget: latency's when there is one, else the one closest to its limit.
    head = next((r for r in rows if r["kind"] == "latency"), None) or max(rows, key=lambda r: r["used"], default=None)
    return {
        "fingerprint": target.fingerprint(),
        "input_shape": list(example.shape) if isinstance(example, torch.Tensor) else None,
        "budget": {
            "text": budget_text,
            "kind": head["kind"] if head else None,
            "relative": head["relative"] if head else None,
            "value": head["value"] if head else None,
            "seconds": head["limit"] if head and head["kind"] == "latency" else None,
            "met": all(r["met"] for r in rows),
            "used": head["used"] if head else None,
        },
        "budgets": rows,
        "dense": {
            "latency": td.to_dict(),
            "macs": macs_d,
            "params": params_d,
            "size_bytes": size_d,
            "memory_bytes": memory_bytes(dense, example),
            "energy_j": target.model_energy(dense, example) if energy else None,
            "accuracy": accuracy(dense, data.x_test, data.y_test) if data is not None else None,
        },
        "pruned": {
            "latency": tp_.to_dict(),
            "macs": macs_p,
            "params": params_p,
            "size_bytes": size_p,
            "memory_bytes": memory_bytes(pruned, example),
            "energy_j": target.model_energy(pruned, example) if energy else None,
            "accuracy": accuracy(pruned, data.x_test, data.y_test) if data is not None else None,
        },
        "speedup": 1.0 / final_ratio,
        "latency_ratio": final_ratio,
        "macs_ratio": macs_p / macs_d if macs_d else None,
        "compression": size_p / size_d,
        "dense_latency_at_planning_ms": t_plan * 1e3,
        "measured_latency_ms": final_s * 1e3,
    }


def prune(cfg: PruneConfig, progress: bool = True) -> PruneResult:
    """Run the whole pipeline; returns the pruned model, its plan and the report (nothing is written).

    Granularities other than `channel` and selections other than `budget` run in methods.py.
    """
    if cfg.selection != "budget":
        from hwprune.pipeline.methods import run_method

        return run_method(cfg, progress)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    stages: dict[str, float] = {}
    t_start = time.perf_counter()
    budgets: list[Budget] = parse_budgets(cfg.budget)
    latency_budget = next((b for b in budgets if b.kind == "latency"), None)
    data, resolved, target = setup(cfg, budgets, progress)
    dense, example = resolved.model, resolved.example_inputs
    criterion = cfg.criterion or ("taylor" if data is not None else "l1")

    t0 = time.perf_counter()
    analysis = analyze(dense, example, cfg.min_keep)
    calib = _calibration(cfg, data, dense, example)
    # With data: the first half re-estimates BN statistics and scores channels; the disjoint second half
    # measures the losses that steer the allocation.
    calib, eval_batches = (
        (calib[: cfg.calib_batches], calib[cfg.calib_batches :]) if data is not None else (calib, calib)
    )
    scores = compute_scores(dense, analysis, criterion, calib, seed=cfg.seed)
    value_mode = cfg.value if cfg.value != "auto" else ("sensitivity" if data is not None else "scores")
    # With real data, every pruned model gets its BatchNorm statistics re-estimated (all allocators alike).
    bn_batches = calib if data is not None else []
    stages["groups_importance_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cost, table = None, None
    if latency_budget is not None:
        cache = LatencyCache(cfg.cache)
        profiler = Profiler(target, cache, progress)
        curves = profiler.build(analysis)
        stages["latency_table_s"] = time.perf_counter() - t0
        table = {
            "entries_measured": profiler.measured,
            "cache_hits": cache.hits,
            "seconds": stages["latency_table_s"],
            "cache": str(cache.path),
            "device_key": profiler.device,
        }
        _log(
            progress,
            f"latency table: {profiler.measured} entries measured, {cache.hits} from cache "
            f"({stages['latency_table_s']:.1f} s)",
        )
        cost = CostModel(analysis, curves)

    t0 = time.perf_counter()
    t_dense = target.time_models([dense], example)[0]
    constraints: list[Constraint] = []
    for b in budgets:
        if b.kind == "latency":
            cost.add_measurement(cost.dense_widths(), t_dense.median)
            _calibrate_remainder(cost, dense, example, scores, target, t_dense.median)
            constraints.append(Constraint(b, cost, t_dense.median, GOAL, ACCEPT_LOW, ACCEPT_HIGH, LATENCY_GAIN))
        else:
            fc = figure_cost_model(b.kind, analysis, dense, example, target)
            constraints.append(Constraint(b, fc, count(b.kind, dense, example, target), 1.0, COUNT_ACCEPT_LOW, 1.0))
    plain = get_allocator(cfg.allocator)
    problem = Problem(
        constraints[0].cost,
        {g.id: g.candidates for g in analysis.groups},
        normalized(scores, criterion),
        trust=cfg.trust,
    )
    allocator = plain
    for c in constraints:
        _log(
            progress,
            f"dense {c.kind} {format_amount(c.kind, c.dense)}; budget {c.budget.describe()} = "
            f"{format_amount(c.kind, c.limit)}",
        )
    if value_mode == "sensitivity" and cfg.allocator == "hw":
        one_shot = LossProbe(dense, example, analysis, scores, bn_batches, eval_batches)
        problem.widths_value = group_sensitivity(one_shot, analysis, progress=progress)
        short_ft = data.batches(64, SHORT_FINETUNE_STEPS, seed=cfg.seed + 1)
        probe = LossProbe(dense, example, analysis, scores, bn_batches, eval_batches, train_batches=short_ft)

        def allocator(problem, aim):  # the knapsack's answer, refined on the joint loss within the trust region
            starts = [plain(problem, aim), get_allocator("uniform")(problem, aim)]
            return refine_by_loss(trust_region(problem, aim), probe, starts, aim)

    def measure(pruned: nn.Module) -> list[float]:
        out = []
        for c in constraints:
            if c.kind != "latency":
                out.append(count(c.kind, pruned, example, target))
            elif c.budget.relative:
                td, tp_ = target.time_models([dense, pruned], example)
                out.append(ratio(tp_, td) * t_dense.median)
            else:
                out.append(target.time_models([pruned], example)[0].median)
        return out

    history = []
    candidates = []
    for it in range(cfg.max_iters):
        widths = _allocate(allocator, plain, problem, constraints)
        predicted = [c.cost.predict(widths) for c in constraints]
        pred_latency = cost.predict(widths) if cost else None
        plan = make_plan(
            widths,
            scores,
            cost.sizes if cost else constraints[0].cost.sizes,
            allocator=cfg.allocator,
            criterion=criterion,
            budget=cfg.budget,
            predicted_latency_s=pred_latency,
        )
        pruned = recalibrate_bn(apply_plan(dense, example, plan), bn_batches)
        measured = measure(pruned)
        if _in_band(constraints, measured) and latency_budget is not None:
            # A second measurement before accepting: one in-band figure can be the machine's luck. On this
            # 2-core VM the interleaved ratio of a 2 ms pruned MNIST-1D model to its dense model varies with a
            # 9-11% coefficient of variation between measurements seconds apart, a 5 ms one's 4-7%
            # (benchmarks/results/noise.md). The loop keeps the mean of the two.
            measured = [(a + b) / 2 for a, b in zip(measured, measure(pruned))]
        row = {"iteration": it + 1}
        for c, pr, m in zip(constraints, predicted, measured):
            row[c.kind] = {"aim": c.aim, "predicted": pr, "measured": m, "used": m / c.limit}
            if c.kind == "latency":  # the core issue's columns
                row.update(aim_ms=c.aim * 1e3, predicted_ms=pr * 1e3, measured_ms=m * 1e3, budget_used=m / c.limit)
        history.append(row)
        _log(
            progress,
            f"  loop {it + 1}: "
            + "; ".join(
                f"{c.kind} aim {format_amount(c.kind, c.aim)}, predicted {format_amount(c.kind, pr)}, "
                f"measured {format_amount(c.kind, m)} ({m / c.limit:.0%} of budget)"
                for c, pr, m in zip(constraints, predicted, measured)
            ),
        )
        value = sum(problem.value(g, w) for g, w in widths.items())
        within = all(m <= c.high * c.limit for c, m in zip(constraints, measured))
        if within:
            candidates.append((value, plan, pruned, pred_latency))
        for c, m in zip(constraints, measured):
            c.cost.add_measurement(widths, m)
        if _in_band(constraints, measured):
            break
        for c, m in zip(constraints, measured):
            c.aim = min(c.aim * (c.goal * c.limit / m) ** c.gain, c.cost.predict(c.cost.dense_widths()) * 1.01)
        if it == 0 and not within:
            _check_feasible(problem, constraints, dense, example, scores, measure, cfg.min_keep)
    if not candidates:
        closest = min(history, key=lambda h: max(h[c.kind]["used"] for c in constraints))
        raise HwpruneError(
            f"no plan met the budget {cfg.budget} in {cfg.max_iters} iterations (closest: "
            + ", ".join(f"{c.kind} {closest[c.kind]['used']:.0%} of its limit" for c in constraints)
            + "); raise the budget or --max-iters"
        )
    # Among plans that meet every budget, the one that keeps the most importance.
    value, plan, pruned, predicted = max(candidates, key=lambda c: c[0])
    stages["allocation_loop_s"] = time.perf_counter() - t0

    acc_oneshot = None
    t0 = time.perf_counter()
    if data is not None:
        acc_oneshot = accuracy(pruned, data.x_test, data.y_test)
        if cfg.finetune_epochs > 0:
            from hwprune.finetune.train import train

            train(
                pruned,
                data,
                cfg.finetune_epochs,
                lr=cfg.lr,
                seed=cfg.seed,
                teacher=dense,
                desc="fine-tuning (KD)",
                progress=progress,
            )
    stages["finetune_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    figures = final_figures(
        dense,
        pruned,
        example,
        target,
        data,
        t_dense.median,
        budgets,
        cfg.budget,
        {c.kind: c.dense for c in constraints},
    )
    figures["pruned"]["accuracy_oneshot"] = acc_oneshot
    final_s = figures["measured_latency_ms"] / 1e3
    stages["evaluate_s"] = time.perf_counter() - t0
    stages["total_s"] = time.perf_counter() - t_start
    report = {
        "format": "hwprune-report/1",
        "model": cfg.model,
        "settings": {
            **asdict(cfg),
            "criterion": criterion,
            "value": value_mode if cfg.allocator == "hw" else None,
            "bn_recalibration": bool(bn_batches),
        },
        **figures,
        "predicted_latency_ms": predicted * 1e3 if predicted is not None else None,
        "predicted_ratio": predicted / t_dense.median if predicted is not None else None,
        "prediction_error": (predicted - final_s) / final_s if predicted is not None else None,
        "latency_table": table,
        "loop": history,
        "groups": [{"id": g.id, "size": g.size, "width": g.width} for g in plan.groups],
        "data": data.description if data is not None else None,
        "stages": stages,
    }
    plan.meta.update({"measured_latency_ms": final_s * 1e3, "fingerprint": report["fingerprint"]})
    return PruneResult(pruned, dense, plan, report, resolved)
