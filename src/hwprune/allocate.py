"""Stage 4: choose a width per group so predicted latency <= a target, keeping the most importance.

`hw` solves a multiple-choice knapsack (one width per group; HALP, Shen et al. NeurIPS 2022, does this
for convs with a hand-made table). A layer's latency depends on two groups (its input and output
widths), so costs are not separable; `hw` linearises them around the current solution, solves the
knapsack exactly, re-linearises at the answer and repeats, keeping the best plan whose full (pairwise)
prediction meets the target. `uniform` and `global` are the baselines on the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .cost import CostModel
from .errors import HwpruneError


@dataclass
class Problem:
    """What every allocator sees: groups, candidate widths, channel scores and the cost model."""

    cost: CostModel
    candidates: dict[str, list[int]]
    scores: dict[str, np.ndarray]  # normalized, comparable across groups

    def value(self, gid: str, width: int) -> float:
        s = np.sort(self.scores[gid])[::-1]
        return float(s[:width].sum())

    def min_widths(self) -> dict[str, int]:
        return {g: c[0] for g, c in self.candidates.items()}


ALLOCATORS: dict[str, Callable[[Problem, float], dict[str, int]]] = {}


def register_allocator(name: str):
    def wrap(fn):
        ALLOCATORS[name] = fn
        return fn

    return wrap


def get_allocator(name: str):
    if name not in ALLOCATORS:
        raise HwpruneError(f"unknown allocator '{name}'; choose one of: {', '.join(sorted(ALLOCATORS))}")
    return ALLOCATORS[name]


def mckp(values: list[np.ndarray], costs: list[np.ndarray], budget: float, bins: int = 4000) -> list[int] | None:
    """Multiple-choice knapsack: one item per class, total cost <= budget, maximum total value.

    Exact dynamic programme over costs discretised to `budget / bins` (rounded *up*, so an answer never
    exceeds the budget). Returns the chosen index per class, or None when even the cheapest items don't fit.
    """
    base = sum(float(c.min()) for c in costs)
    room = budget - base
    if room < -1e-12:
        return None
    step = max(room, 1e-12) / bins
    neg = -np.inf
    dp = np.full(bins + 1, neg)
    dp[0] = 0.0
    choice = np.zeros((len(values), bins + 1), dtype=np.int32)
    for k, (v, c) in enumerate(zip(values, costs)):
        w = np.ceil((c - c.min()) / step - 1e-9).astype(int)
        new = np.full(bins + 1, neg)
        for j in range(len(v)):
            if w[j] > bins:
                continue
            shifted = np.full(bins + 1, neg)
            shifted[w[j]:] = dp[: bins + 1 - w[j]] + v[j]
            better = shifted > new
            new[better] = shifted[better]
            choice[k, better] = j
        dp = new
    b = int(np.argmax(dp))
    if not np.isfinite(dp[b]):
        return None
    picks = [0] * len(values)
    for k in range(len(values) - 1, -1, -1):
        j = int(choice[k, b])
        picks[k] = j
        b -= int(np.ceil((costs[k][j] - costs[k].min()) / step - 1e-9))
    return picks


@register_allocator("hw")
def allocate_hw(problem: Problem, target: float, rounds: int = 8) -> dict[str, int]:
    """Knapsack over measured per-group latency curves, re-linearised `rounds` times."""
    cost = problem.cost
    gids = list(problem.candidates)
    values = [np.array([problem.value(g, w) for w in problem.candidates[g]]) for g in gids]
    current = cost.dense_widths()
    best, best_val = None, -np.inf
    seen = set()
    for _ in range(rounds):
        curves = [cost.group_costs(g, current, problem.candidates[g]) for g in gids]
        now = cost.predict(current)
        # Linearisation: predicted(new) ~= predicted(current) + sum_g [curve_g(new_g) - curve_g(current_g)].
        offset = now - sum(float(np.interp(current[g], problem.candidates[g], c)) for g, c in zip(gids, curves))
        picks = mckp(values, curves, target - offset)
        if picks is None:
            break
        widths = {g: problem.candidates[g][j] for g, j in zip(gids, picks)}
        key = tuple(sorted(widths.items()))
        val = sum(v[j] for v, j in zip(values, picks))
        if cost.predict(widths) <= target and val > best_val:
            best, best_val = widths, val
        if key in seen:
            break
        seen.add(key)
        current = widths
    if best is None:
        best = _shrink_to_fit(problem, current if picks is not None else problem.min_widths(), target)
    return best


def _shrink_to_fit(problem: Problem, widths: dict[str, int], target: float) -> dict[str, int]:
    """Greedy repair: drop the width with the least value lost per second saved until the target is met."""
    widths = dict(widths)
    cost = problem.cost
    while cost.predict(widths) > target:
        best, best_ratio = None, np.inf
        now = cost.predict(widths)
        for g, cands in problem.candidates.items():
            i = cands.index(widths[g]) if widths[g] in cands else len(cands)
            if i == 0:
                continue
            trial = {**widths, g: cands[i - 1]}
            saved = now - cost.predict(trial)
            lost = problem.value(g, widths[g]) - problem.value(g, cands[i - 1])
            ratio = lost / saved if saved > 0 else np.inf
            if ratio < best_ratio:
                best, best_ratio = trial, ratio
        if best is None:
            break
        widths = best
    return widths


def _bisect(make: Callable[[float], dict[str, int]], problem: Problem, target: float, lo: float, hi: float,
            fits_at_hi: bool) -> dict[str, int]:
    """Find the parameter in [lo, hi] whose widths have predicted latency closest under `target`."""
    cost = problem.cost
    good = make(lo if fits_at_hi else hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        widths = make(mid)
        ok = cost.predict(widths) <= target
        if ok:
            good = widths
        if ok == fits_at_hi:
            hi = mid
        else:
            lo = mid
    return good


@register_allocator("uniform")
def allocate_uniform(problem: Problem, target: float) -> dict[str, int]:
    """One keep-ratio for every group (what Torch-Pruning users do), bisected to meet the target."""
    sizes = problem.cost.sizes
    mins = problem.min_widths()

    def make(r: float) -> dict[str, int]:
        return {g: max(mins[g], min(s, int(round(r * s)))) for g, s in sizes.items()}

    return _bisect(make, problem, target, 0.0, 1.0, fits_at_hi=False)


@register_allocator("global")
def allocate_global(problem: Problem, target: float) -> dict[str, int]:
    """One importance threshold across all groups (normalised scores), bisected to meet the target."""
    mins = problem.min_widths()
    top = max(float(s.max()) for s in problem.scores.values())

    def make(tau: float) -> dict[str, int]:
        return {g: max(mins[g], int((s >= tau).sum())) for g, s in problem.scores.items()}

    return _bisect(make, problem, target, 0.0, top * 1.0001, fits_at_hi=True)
