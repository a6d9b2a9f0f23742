"""Group-level importance measured as loss, for the hardware allocator when data is available.

1. `group_sensitivity`: how much the calibration loss rises when one group alone is narrowed to each
   candidate width (layer sensitivity, as NetAdapt and AMC measure it). The knapsack maximises the sum
   of these values; a sum of channel scores (HALP's value) is not additive in accuracy and let the
   knapsack squeeze single groups into bottlenecks (benchmarks/results/allocators-v1-*).
2. `refine_by_loss`: the sum of single-group rises misses interactions (two neighbouring narrow groups
   hurt more than each alone; benchmarks/results/allocators-v2/v3-*), so the knapsack's answer is then
   improved on the *joint* loss of whole plans: move width from one group to another while the predicted
   latency stays within the target, keep a move when the measured calibration loss falls.

Every loss is measured after re-estimating BatchNorm statistics, on batches held out from those used
for that re-estimation. The channels kept at a width are always the criterion's top-ranked ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwprune.apply.channels import apply_plan, recalibrate_bn
from hwprune.core.modules import logits
from hwprune.cost.curves import spread
from hwprune.cost.progress import Stage
from hwprune.finetune.train import train_steps
from hwprune.groups.analysis import GroupAnalysis
from hwprune.plan.allocate import Problem, shift_moves
from hwprune.plan.plan import make_plan

#: Widths measured per group curve; values in between are interpolated linearly.
POINTS = 6
#: Whole-plan loss evaluations allowed per refinement (each is one surgery + BN re-estimation + a loss
#: pass over the held-out batches: ~0.2 s for the demo model on 2 cores).
MAX_EVALS = 60
#: Wall-clock the local search may spend (seconds). A probe is a short fine-tune: ~0.1 s on the demo's CNN
#: (60 probes in 6 s), 6 s or more on all-MiniLM-L6-v2 at 8 x 128 tokens on this 2-core VM (20 steps at the
#: 3.3 steps/s its fine-tuning ran here), where an allocation of the closed loop ran for over 5 minutes
#: unbounded before it was stopped. The number of probes follows the measured cost.
REFINE_SECONDS = 90.0
#: A move must lower the loss by this fraction to count (below it, differences are sampling noise).
MIN_GAIN = 2e-3


class LossProbe:
    """Calibration loss of the dense model pruned to any widths (cached per plan).

    `train_batches`: when given, each pruned candidate is first fine-tuned for one step per batch with
    distillation from the dense model before its loss is measured (NetAdapt's short-term fine-tuning, Yang
    et al. ECCV 2018). At 0.15 of dense latency on the demo, one-shot loss preferred plans that recover
    worse under fine-tuning than uniform ones (benchmarks/results/allocators-v4-*).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs,
        analysis: GroupAnalysis,
        scores: dict[str, np.ndarray],
        bn_batches: list,
        eval_batches: list,
        loss_fn: Callable | None = None,
        train_batches: list | None = None,
        lr: float = 1e-3,
    ):
        self.model, self.example, self.scores = model, example_inputs, scores
        self.sizes = {g.id: g.size for g in analysis.groups}
        self.multiples, self.units = analysis.multiples, analysis.units
        self.bn_batches, self.eval_batches = bn_batches, eval_batches
        self.loss_fn = loss_fn or F.cross_entropy
        self.train_batches, self.lr = train_batches or [], lr
        self._cache: dict[tuple, float] = {}

    @property
    def evaluations(self) -> int:
        return len(self._cache)

    def __call__(self, widths: dict[str, int]) -> float:
        key = tuple(sorted({**self.sizes, **widths}.items()))
        if key not in self._cache:
            pruned = apply_plan(
                self.model,
                self.example,
                make_plan(dict(key), self.scores, self.sizes, self.multiples, units=self.units),
            )
            recalibrate_bn(pruned, self.bn_batches)
            if self.train_batches:
                torch.manual_seed(0)  # every candidate gets the same short fine-tune
                train_steps(
                    pruned, self.train_batches, self.lr, teacher=self.model, progress=False, loss_fn=self.loss_fn
                )
            pruned.eval()
            with torch.no_grad():
                self._cache[key] = float(
                    np.mean([float(self.loss_fn(logits(pruned, x), y)) for x, y in self.eval_batches])
                )
        return self._cache[key]


def group_sensitivity(probe: LossProbe, analysis: GroupAnalysis, progress: bool = True) -> dict[str, np.ndarray]:
    """Group id -> value per candidate width: minus the loss rise with that group alone narrowed."""
    base = probe({})
    values: dict[str, np.ndarray] = {}
    total = sum(len(spread(g.candidates[:-1], POINTS - 1)) for g in analysis.groups)
    with Stage("sensitivity", total, "plan", progress, leave=False) as bar:
        for g in analysis.groups:
            rise = {g.size: 0.0}
            for w in spread(g.candidates[:-1], POINTS - 1):
                rise[w] = max(0.0, probe({g.id: w}) - base)
                bar.update(1)
            xs = sorted(rise)
            # Narrower never costs less loss than wider: enforce a monotone curve against noise.
            ys = np.maximum.accumulate(np.array([rise[x] for x in xs])[::-1])[::-1]
            values[g.id] = -np.interp(g.candidates, xs, ys)
    return values


def _step(cands: list[int]) -> int:
    """Candidate positions per move: about 1/16 of a group's range, so one move changes the loss measurably."""
    return max(1, len(cands) // 16)


def refine_by_loss(
    problem: Problem, probe: LossProbe, starts: list[dict[str, int]], target: float, max_evals: int = MAX_EVALS
) -> dict[str, int]:
    """Best-improvement local search on the joint calibration loss under the predicted-latency target,
    from the best of several starting plans (the knapsack's answer and the uniform plan)."""
    feasible = [s for s in starts if problem.cost.predict(s) <= target] or starts[:1]
    t0, before = time.perf_counter(), probe.evaluations
    widths = min(feasible, key=probe)
    per_probe = (time.perf_counter() - t0) / max(1, probe.evaluations - before)
    if per_probe > 0:
        max_evals = min(max_evals, int(REFINE_SECONDS / per_probe))
    cands = problem.candidates
    cost = problem.cost
    cur = dict(widths)
    cur_loss = probe(cur)
    start = probe.evaluations
    while probe.evaluations - start < max_evals:
        best, best_loss = None, cur_loss * (1 - MIN_GAIN)
        for mv in list(shift_moves(cands, cur, _step)):
            trial = {**cur, **mv}
            if cost.predict(trial) > target:
                continue
            loss = probe(trial)
            if loss < best_loss:
                best, best_loss = trial, loss
            if probe.evaluations - start >= max_evals:
                break
        if best is None:
            break
        cur, cur_loss = best, best_loss
    return cur
