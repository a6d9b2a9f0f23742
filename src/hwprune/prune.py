"""The pipeline: groups -> importance -> cost -> plan (closed loop) -> apply -> finetune -> evaluate.

The closed loop: the allocator aims the *predicted* latency at a target; the plan is applied and the
real model is timed (interleaved with the dense model for relative budgets); the remainder model is
refitted, the target is corrected by measured/goal, and this repeats until a plan's measured latency
lands in [ACCEPT_LOW, ACCEPT_HIGH] x budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .allocate import Problem, get_allocator
from .apply import apply_plan, recalibrate_bn
from .budget import Budget, parse_budget
from .cost import CostModel, Profiler
from .data import Dataset, get_dataset
from .errors import HwpruneError
from .evaluate import accuracy, macs_params, size_bytes
from .groups import _forward, analyze
from .hardware.table import LatencyCache
from .hardware.targets import get_target
from .importance import compute_scores, get_criterion, normalized
from .models import ResolvedModel, resolve
from .plan import Plan, make_plan
from .sensitivity import LossProbe, group_sensitivity, refine_by_loss

#: Aim the measured latency at 91% of the budget. The interleaved pruned/dense ratio of the same two
#: models moved by up to 4.6% between the loop's measurement and the final one minutes later on this
#: 2-core machine (demo, 0.479 -> 0.4996; MNIST-1D at budget 0.15, a 1.7 ms model, 0.965 -> 1.01 of
#: budget), so the loop accepts at most 95% of the budget.
GOAL = 0.91
#: Accept a plan whose measured latency is within this band of the budget. The lower edge is above
#: the 85% the core issue asks for: a plan far under budget throws accuracy away.
ACCEPT_LOW, ACCEPT_HIGH = 0.87, 0.95
#: Distillation steps (batches of 64) each candidate plan gets before its loss steers the hw allocator.
SHORT_FINETUNE_STEPS = 20


@dataclass
class PruneConfig:
    """Everything `hwprune prune` takes; plain data, so it round-trips to JSON in the report."""

    model: str
    budget: str = "0.5"
    batch_size: int = 1
    input_shape: str | None = None
    criterion: str | None = None  # default: taylor with --data, else l1
    allocator: str = "hw"
    value: str = "auto"  # what hw maximises: sensitivity (measured loss; default with --data) or scores
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

    def __post_init__(self):
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
class PruneResult:
    model: nn.Module
    dense: nn.Module
    plan: Plan
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
            y = _forward(model, x).argmax(-1)
        out.append((x, y))
    return out


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, flush=True)


def prune(cfg: PruneConfig, progress: bool = True) -> PruneResult:
    """Run the whole pipeline; returns the pruned model, its plan and the report (nothing is written)."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    stages: dict[str, float] = {}
    t_start = time.perf_counter()
    budget: Budget = parse_budget(cfg.budget)
    data = get_dataset(cfg.data) if cfg.data else None
    resolved = resolve(cfg.model, cfg.batch_size, cfg.input_shape, progress)
    dense, example = resolved.model, resolved.example_inputs
    if data is not None:
        try:
            with torch.no_grad():
                out = dense(data.x_test[:2])
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
    criterion = cfg.criterion or ("taylor" if data is not None else "l1")
    target = get_target(cfg.target, threads=cfg.threads)

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

    t0 = time.perf_counter()
    cost = CostModel(analysis, curves)
    t_dense = target.time_models([dense], example)[0]
    cost.add_measurement(cost.dense_widths(), t_dense.median)
    budget_s = budget.seconds(t_dense.median)
    problem = Problem(cost, {g.id: g.candidates for g in analysis.groups}, normalized(scores, criterion))
    allocator = get_allocator(cfg.allocator)
    _log(progress, f"dense latency {t_dense.median * 1e3:.2f} ms; budget {budget.describe()} = {budget_s * 1e3:.2f} ms")
    if value_mode == "sensitivity" and cfg.allocator == "hw":
        one_shot = LossProbe(dense, example, analysis, scores, bn_batches, eval_batches)
        problem.widths_value = group_sensitivity(one_shot, analysis, progress=progress)
        short_ft = data.batches(64, SHORT_FINETUNE_STEPS, seed=cfg.seed + 1)
        probe = LossProbe(dense, example, analysis, scores, bn_batches, eval_batches, train_batches=short_ft)
        knapsack = allocator

        def allocator(problem, aim):  # noqa: F811 - the knapsack's answer, refined on the joint loss
            starts = [knapsack(problem, aim), get_allocator("uniform")(problem, aim)]
            return refine_by_loss(problem, probe, starts, aim)

    history = []
    candidates = []
    aim = budget_s * GOAL
    for it in range(cfg.max_iters):
        widths = allocator(problem, aim)
        predicted = cost.predict(widths)
        plan = make_plan(
            widths,
            scores,
            cost.sizes,
            allocator=cfg.allocator,
            criterion=criterion,
            budget=cfg.budget,
            predicted_latency_s=predicted,
        )
        pruned = recalibrate_bn(apply_plan(dense, example, plan), bn_batches)
        if budget.relative:
            td, tp_ = target.time_models([dense, pruned], example)
            measured = tp_.median / td.median * t_dense.median
        else:
            measured = target.time_models([pruned], example)[0].median
        history.append(
            {
                "iteration": it + 1,
                "aim_ms": aim * 1e3,
                "predicted_ms": predicted * 1e3,
                "measured_ms": measured * 1e3,
                "budget_used": measured / budget_s,
            }
        )
        _log(
            progress,
            f"  loop {it + 1}: aim {aim * 1e3:.2f} ms, predicted {predicted * 1e3:.2f} ms, "
            f"measured {measured * 1e3:.2f} ms ({measured / budget_s:.0%} of budget)",
        )
        value = sum(problem.value(g, w) for g, w in widths.items())
        if measured <= budget_s * ACCEPT_HIGH:
            candidates.append((value, measured, plan, pruned, predicted))
        cost.add_measurement(widths, measured)
        if ACCEPT_LOW * budget_s <= measured <= ACCEPT_HIGH * budget_s:
            break
        aim = aim * (budget_s * GOAL) / measured
        if it == 0 and measured > budget_s:
            # Is any plan feasible? The narrowest plan, measured, settles it once.
            narrow = problem.min_widths()
            if cost.predict(narrow) > aim:
                nplan = make_plan(narrow, scores, cost.sizes)
                tn = target.time_models([apply_plan(dense, example, nplan)], example)[0].median
                if tn > budget_s:
                    raise HwpruneError(
                        f"budget {budget.describe()} ({budget_s * 1e3:.2f} ms) cannot be met: the narrowest plan "
                        f"(every group at {cfg.min_keep:.0%}) measures {tn * 1e3:.2f} ms; "
                        "raise the budget or lower --min-keep"
                    )
    if not candidates:
        best = min(history, key=lambda h: h["measured_ms"])
        raise HwpruneError(
            f"no plan met the budget of {budget_s * 1e3:.2f} ms in {cfg.max_iters} iterations "
            f"(closest measured {best['measured_ms']:.2f} ms); raise the budget or --max-iters"
        )
    # Among plans that meet the budget, the one that keeps the most importance.
    value, measured, plan, pruned, predicted = max(candidates, key=lambda c: c[0])
    stages["allocation_loop_s"] = time.perf_counter() - t0

    acc_oneshot = None
    t0 = time.perf_counter()
    if data is not None:
        acc_oneshot = accuracy(pruned, data.x_test, data.y_test)
        if cfg.finetune_epochs > 0:
            from .examples import train

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
    pruned.eval()
    td, tp_ = target.time_models([dense, pruned], example, final=True)
    speedup = td.median / tp_.median
    final_s = tp_.median / td.median * t_dense.median if budget.relative else tp_.median
    macs_d, params_d = macs_params(dense, example)
    macs_p, params_p = macs_params(pruned, example)
    size_d, size_p = size_bytes(dense), size_bytes(pruned)
    stages["evaluate_s"] = time.perf_counter() - t0
    stages["total_s"] = time.perf_counter() - t_start

    met = (tp_.median / td.median <= budget.value) if budget.relative else (tp_.median <= budget.value)
    report = {
        "format": "hwprune-report/1",
        "model": cfg.model,
        "settings": {
            **asdict(cfg),
            "criterion": criterion,
            "value": value_mode if cfg.allocator == "hw" else None,
            "bn_recalibration": bool(bn_batches),
        },
        "fingerprint": target.fingerprint(),
        "input_shape": list(example.shape) if isinstance(example, torch.Tensor) else None,
        "budget": {
            "text": cfg.budget,
            "relative": budget.relative,
            "value": budget.value,
            "seconds": budget_s,
            "met": bool(met),
            "used": final_s / budget_s,
        },
        "dense": {
            "latency": td.to_dict(),
            "macs": macs_d,
            "params": params_d,
            "size_bytes": size_d,
            "accuracy": accuracy(dense, data.x_test, data.y_test) if data is not None else None,
        },
        "pruned": {
            "latency": tp_.to_dict(),
            "macs": macs_p,
            "params": params_p,
            "size_bytes": size_p,
            "accuracy_oneshot": acc_oneshot,
            "accuracy": accuracy(pruned, data.x_test, data.y_test) if data is not None else None,
        },
        "speedup": speedup,
        "latency_ratio": tp_.median / td.median,
        "macs_ratio": macs_p / macs_d,
        "compression": size_p / size_d,
        # Predicted and measured are both on the scale of the dense latency measured when planning
        # (t_plan): measured = final interleaved pruned/dense ratio x t_plan, so machine drift between
        # planning and the final measurement cancels (MEASURING.md rule 6).
        "dense_latency_at_planning_ms": t_dense.median * 1e3,
        "predicted_latency_ms": predicted * 1e3,
        "measured_latency_ms": final_s * 1e3,
        "predicted_ratio": predicted / t_dense.median,
        "prediction_error": (predicted - final_s) / final_s,
        "latency_table": table,
        "loop": history,
        "groups": [{"id": g.id, "size": g.size, "width": g.width} for g in plan.groups],
        "data": data.description if data is not None else None,
        "stages": stages,
    }
    plan.meta.update({"measured_latency_ms": final_s * 1e3, "fingerprint": report["fingerprint"]})
    return PruneResult(pruned, dense, plan, report, resolved)
