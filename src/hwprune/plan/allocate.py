"""Stage 4: choose a width per group so predicted latency <= a target, keeping the most importance.

`hw` solves a multiple-choice knapsack (one width per group; HALP, Shen et al. NeurIPS 2022, does this
for convs with a hand-made table). A layer's latency depends on two groups (its input and output
widths), so costs are not separable; `hw` linearises them around the current solution, solves the
knapsack exactly, re-linearises at the answer and repeats, keeping the best plan whose full (pairwise)
prediction meets the target. `uniform` and `global` are the baselines on the same interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from hwprune.core.registry import Registry
from hwprune.cost.model import CostModel


@dataclass
class Problem:
    """What every allocator sees: groups, candidate widths, channel scores and the cost model."""

    cost: CostModel
    candidates: dict[str, list[int]]
    scores: dict[str, np.ndarray]  # normalized, comparable across groups
    #: Optional measured value per candidate width (see sensitivity.py); else the kept scores' sum.
    widths_value: dict[str, np.ndarray] | None = None
    #: `hw` keeps each width within [trust * u, u / trust] of the uniform plan u at the same target (0: anywhere).
    trust: float = 0.0

    def value(self, gid: str, width: int) -> float:
        if self.widths_value is not None:
            return float(np.interp(width, self.candidates[gid], self.widths_value[gid]))
        s = np.sort(self.scores[gid])[::-1]
        return float(s[:width].sum())

    def min_widths(self) -> dict[str, int]:
        return {g: c[0] for g, c in self.candidates.items()}


#: An allocator maps (problem, latency aim) to a width per group.
ALLOCATORS: Registry[Callable[[Problem, float], dict[str, int]]] = Registry("allocator", "--allocator")
register_allocator = ALLOCATORS.register
get_allocator = ALLOCATORS.get


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
    for k, (v, c) in enumerate(zip(values, costs, strict=False)):
        w = np.ceil((c - c.min()) / step - 1e-9).astype(int)
        new = np.full(bins + 1, neg)
        for j in range(len(v)):
            if w[j] > bins:
                continue
            shifted = np.full(bins + 1, neg)
            shifted[w[j] :] = dp[: bins + 1 - w[j]] + v[j]
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


def _chain_order(problem: Problem) -> list[str] | None:
    """Groups in path order when every layer couples at most two groups and those pairs form one path."""
    gids = list(problem.candidates)
    nbrs: dict[str, set[str]] = {g: set() for g in gids}
    for la in problem.cost.analysis.layers:
        touched = {g for g in (*la.in_groups, la.out_group) if g in nbrs}
        if len(touched) > 2:
            return None  # a concatenated input ties three or more groups in one layer: not a path
        if len(touched) == 2:
            a, b = touched
            nbrs[a].add(b)
            nbrs[b].add(a)
    if any(len(n) > 2 for n in nbrs.values()):
        return None
    ends = [g for g in gids if len(nbrs[g]) <= 1]
    if not ends:
        return None
    order, prev = [ends[0]], None
    while len(order) < len(gids):
        nxt = [n for n in nbrs[order[-1]] if n != prev]
        if not nxt:
            return None  # more than one connected piece
        prev = order[-1]
        order.append(nxt[0])
    return order


def chain_terms(problem: Problem, order: list[str]):
    """Split predicted latency into const + unary_k[j] + pair_k[i, j] along the path `order` (exact)."""
    cost = problem.cost
    cands = [problem.candidates[g] for g in order]
    pos = {g: k for k, g in enumerate(order)}
    unary = [np.array([cost.r1 * cost.phi_share(g, w) for w in cands[k]]) for k, g in enumerate(order)]
    pair = [None] + [np.zeros((len(cands[k - 1]), len(cands[k]))) for k in range(1, len(order))]
    const = cost.r0 + cost.r1 * cost.phi({g: 0 for g in order})
    for la in cost.analysis.layers:
        curve = cost.curves[la.name]
        ks = sorted({pos[x] for x in (*la.in_groups, la.out_group) if x in pos})
        if not ks:
            const += curve(la.in_channels, la.out_channels)
        elif len(ks) == 1:
            k = ks[0]
            unary[k] += [curve(*cost._widths_of(la, {order[k]: w})) for w in cands[k]]
        else:
            k = ks[1]
            pair[k] += [
                [curve(*cost._widths_of(la, {order[k - 1]: wp, order[k]: w})) for w in cands[k]] for wp in cands[k - 1]
            ]
    return const, unary, pair


def chain_dp(problem: Problem, order: list[str], target: float, bins: int = 4000) -> dict[str, int] | None:
    """Exact (up to the latency discretisation) allocation when the groups form a path g1 - g2 - ... - gK.

    Predicted latency = const + sum_k unary_k(w_k) + sum_k pair_k(w_{k-1}, w_k), every layer belonging
    to one unary or pair term; a DP over (width of g_k, latency bin) maximises the kept importance.
    Bin costs are rounded up, so the answer's predicted latency never exceeds the target.
    """
    const, unary, pair = chain_terms(problem, order)
    cands = [problem.candidates[g] for g in order]
    step_costs = [unary[0][None, :]] + [pair[k] + unary[k][None, :] for k in range(1, len(order))]
    lows = [float(c.min()) for c in step_costs]
    room = target - const - sum(lows)
    if room < 0:
        return None
    delta = max(room, 1e-12) / bins
    binned = [np.ceil((c - lo) / delta - 1e-9).astype(np.int64) for c, lo in zip(step_costs, lows, strict=False)]
    values = [np.array([problem.value(g, w) for w in problem.candidates[g]]) for g in order]
    neg = -np.inf
    # dp[j, b]: best value of g1..gk with gk at candidate j and total bins exactly b.
    dp = np.full((len(cands[0]), bins + 1), neg)
    for j in range(len(cands[0])):
        if binned[0][0, j] <= bins:
            dp[j, binned[0][0, j]] = values[0][j]
    back = []
    for k in range(1, len(order)):
        new = np.full((len(cands[k]), bins + 1), neg)
        arg = np.zeros((len(cands[k]), bins + 1), dtype=np.int32)
        for j in range(len(cands[k])):
            for i in range(len(cands[k - 1])):
                c = binned[k][i, j]
                if c > bins:
                    continue
                cand = np.full(bins + 1, neg)
                cand[c:] = dp[i, : bins + 1 - c] + values[k][j]
                better = cand > new[j]
                new[j, better] = cand[better]
                arg[j, better] = i
        dp = new
        back.append(arg)
    j, b = np.unravel_index(int(np.argmax(dp)), dp.shape)
    if not np.isfinite(dp[j, b]):
        return None
    picks = [int(j)]
    for k in range(len(order) - 1, 0, -1):
        i = int(back[k - 1][j, b])
        b -= int(binned[k][i, j])
        j = i
        picks.append(j)
    picks.reverse()
    return {g: cands[k][picks[k]] for k, g in enumerate(order)}


def _knapsack_linearised(problem: Problem, target: float, start: dict[str, int], rounds: int = 8):
    """Knapsack over per-group latency curves, re-linearised around each answer `rounds` times."""
    cost = problem.cost
    gids = list(problem.candidates)
    values = [np.array([problem.value(g, w) for w in problem.candidates[g]]) for g in gids]
    current = dict(start)
    best, best_val = None, -np.inf
    seen = set()
    for _ in range(rounds):
        curves = [cost.group_costs(g, current, problem.candidates[g]) for g in gids]
        now = cost.predict(current)
        # Linearisation: predicted(new) ~= predicted(current) + sum_g [curve_g(new_g) - curve_g(current_g)].
        offset = now - sum(
            float(np.interp(current[g], problem.candidates[g], c)) for g, c in zip(gids, curves, strict=False)
        )
        picks = mckp(values, curves, target - offset)
        if picks is None:
            break
        widths = {g: problem.candidates[g][j] for g, j in zip(gids, picks, strict=False)}
        key = tuple(sorted(widths.items()))
        val = sum(v[j] for v, j in zip(values, picks, strict=False))
        if cost.predict(widths) <= target and val > best_val:
            best, best_val = widths, val
        if key in seen:
            break
        seen.add(key)
        current = widths
    return best


#: The trust region of `hw` when the plan will be fine-tuned (PruneConfig.trust): widths within 0.75x-1.33x
#: of the uniform plan.
#: Importance and one-shot loss cannot see that a very narrow layer becomes the bottleneck once the
#: model is fine-tuned. Measured on the MNIST-1D demo model at 0.15 of dense latency (equal predicted
#: latency, Taylor scores, 4 epochs of KD fine-tuning, 3 seeds): the unrestricted knapsack sends one conv
#: to its floor (26 of 256 channels) and reaches 98.82%; uniform (69 wide) 98.94%; the knapsack within
#: 0.75x-1.33x of uniform 99.05% (every seed at or above uniform); within 0.6x-1.67x 98.96%.
TRUST = 0.75


def trust_region(problem: Problem, target: float) -> Problem:
    """The problem with each group's candidates cut to [trust * u, u / trust], u = the uniform plan at
    `target`; u's own width is always a candidate, so the region holds the uniform plan."""
    if not problem.trust:
        return problem
    u = allocate_uniform(problem, target)
    t = problem.trust
    cands = {g: sorted({w for w in c if t * u[g] <= w <= u[g] / t} | {u[g]}) for g, c in problem.candidates.items()}
    values = None
    if problem.widths_value is not None:  # measured values are per candidate: re-read them at the new ones
        values = {g: np.array([problem.value(g, w) for w in c]) for g, c in cands.items()}
    return replace(problem, candidates=cands, widths_value=values, trust=0.0)


@register_allocator("hw")
def allocate_hw(problem: Problem, target: float) -> dict[str, int]:
    """Most kept importance under the measured-latency target, within the problem's trust region.

    Chains of groups (plain CNNs, MLPs) are solved exactly by `chain_dp`. Other graphs (residual adds tie a
    group to many others) use the linearised knapsack, started from the dense widths and from both
    baselines' answers, each polished by `_exchange`; the best of these is returned, so `hw` never keeps
    less predicted importance than `uniform` or `global` at the same target.
    """
    problem = trust_region(problem, target)
    order = _chain_order(problem)
    if order is not None:
        exact = chain_dp(problem, order, target)
        if exact is not None and problem.cost.predict(exact) <= target:
            return _exchange(problem, exact, target)
    starts = [problem.cost.dense_widths(), allocate_uniform(problem, target), allocate_global(problem, target)]
    found = []
    for start in starts:
        w = _knapsack_linearised(problem, target, start)
        if w is not None:
            found.append(w)
        start = _on_grid(problem, start)
        if problem.cost.predict(start) <= target:
            found.append(start)
    if not found:
        found = [_shrink_to_fit(problem, problem.min_widths(), target)]
    polished = [_exchange(problem, w, target) for w in found]
    return max(polished, key=lambda w: sum(problem.value(g, x) for g, x in w.items()))


def _on_grid(problem: Problem, widths: dict[str, int]) -> dict[str, int]:
    """Each width rounded down to one of its group's candidates. The baselines pick any width, and a start off
    the grid was once dropped: on Inception-v3 (94 groups, layers reading up to six concatenated groups) the
    knapsack found nothing, and `hw` polished the narrowest plan to 0.21 of a MAC limit and stopped there."""
    out = {}
    for g, w in widths.items():
        below = [c for c in problem.candidates[g] if c <= w]
        out[g] = below[-1] if below else problem.candidates[g][0]
    return out


def shift_moves(
    candidates: dict[str, list[int]], widths: dict[str, int], step: Callable[[list[int]], int]
) -> Iterator[dict[str, int]]:
    """Neighbouring plans as {group: new width}: widen one group by `step(candidates)` positions, alone
    or while narrowing one other group by its step. Widths not on a group's candidate list never move."""

    def position(g: str) -> int:
        return candidates[g].index(widths[g]) if widths[g] in candidates[g] else -1

    for g_up, c_up in candidates.items():
        i = position(g_up)
        if not 0 <= i < len(c_up) - 1:
            continue
        up = c_up[min(len(c_up) - 1, i + step(c_up))]
        yield {g_up: up}
        for g_dn, c_dn in candidates.items():
            j = position(g_dn)
            if g_dn != g_up and j > 0:
                yield {g_up: up, g_dn: c_dn[max(0, j - step(c_dn))]}


def _around(cost, widths: dict[str, int]) -> Callable[[dict[str, int]], float]:
    """The prediction of `widths` with a few groups changed: incremental where the cost model offers it."""
    if hasattr(cost, "around"):
        return cost.around(widths)
    return lambda changes: cost.predict({**widths, **changes})


def _exchange(problem: Problem, widths: dict[str, int], target: float, max_sweeps: int = 20) -> dict[str, int]:
    """Local search on the exact (pairwise) prediction: move one group to any width, or widen one group
    by a step while narrowing another by a step, whenever that keeps more importance within the target.

    The knapsack's linearisation misses gains where two groups share a layer (its cost is ~ c_in * c_out);
    these moves recover them.
    """
    cost = problem.cost
    cands = problem.candidates
    gids = list(cands)
    widths = dict(widths)
    val = {g: {w: problem.value(g, w) for w in cands[g]} for g in gids}
    for _ in range(max_sweeps):
        near = _around(cost, widths)
        best_gain, best_move = 1e-12, None
        for g in gids:
            for w in cands[g]:
                if w == widths[g] or val[g][w] - val[g].get(widths[g], 0.0) <= best_gain:
                    continue
                if near({g: w}) <= target:
                    best_gain, best_move = val[g][w] - val[g].get(widths[g], 0.0), {g: w}
        for mv in shift_moves(cands, widths, lambda c: 1):
            if len(mv) == 1:
                continue  # single-group moves were all tried above
            gain = sum(val[g][w] - val[g][widths[g]] for g, w in mv.items())
            if gain <= best_gain:
                continue
            if near(mv) <= target:
                best_gain, best_move = gain, mv
        if best_move is None:
            break
        trial = {**widths, **best_move}
        if cost.predict(trial) > target:
            break  # the incremental sum's rounding let a move by that the full prediction refuses
        widths = trial
    return widths


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


def _bisect(
    make: Callable[[float], dict[str, int]], problem: Problem, target: float, lo: float, hi: float, fits_at_hi: bool
) -> dict[str, int]:
    """Find the parameter in [lo, hi] whose widths have predicted latency closest under `target`; when no
    parameter fits, the end that fits best (the narrowest plan). This once returned the dense plan instead,
    and `hw`'s trust region, centred on the uniform plan, then held a 0.15 run at 0.7 of dense latency for
    all its iterations after one refit predicted every plan over the aim."""
    cost = problem.cost
    good = make(hi if fits_at_hi else lo)
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


class _WeightedSum:
    """A layer curve that is a weighted sum of several figures' curves for the same layer."""

    def __init__(self, parts: list[tuple[float, Callable[[int, int], float]]]):
        self.parts = parts

    def __call__(self, c_in: int, c_out: int) -> float:
        return sum(w * curve(c_in, c_out) for w, curve in self.parts)


def surrogate_cost(costs: list[CostModel], weights: list[float]) -> CostModel:
    """sum_k weights[k] * costs[k] as one CostModel, so every allocator can plan against it unchanged."""
    base = costs[0]
    curves = {
        name: _WeightedSum([(w, c.curves[name]) for w, c in zip(weights, costs, strict=False)]) for name in base.curves
    }
    return CostModel(
        base.analysis,
        curves,
        r0=sum(w * c.r0 for w, c in zip(weights, costs, strict=False)),
        r1=sum(w * c.r1 for w, c in zip(weights, costs, strict=False)),
    )


#: Rounds of weight updates for several limits at once, and the step of the multiplicative update.
SURROGATE_ROUNDS = 12
SURROGATE_STEP = 2.0


def allocate_constrained(
    allocator: Callable[[Problem, float], dict[str, int]],
    problem: Problem,
    costs: list[CostModel],
    limits: list[float],
) -> tuple[dict[str, int], Problem]:
    """Widths whose predicted figure k is <= limits[k] for every k (latency, memory, energy, ...).

    Surrogate-constraint duality (Glover 1975): the k constraints are replaced by one, sum_k mu_k *
    cost_k / limit_k <= 1 with sum mu = 1, which every plan feasible for all k satisfies; the allocator
    solves that, and mu moves multiplicatively toward the constraints the answer violates. The best
    answer feasible for every k (by kept value) is returned with the surrogate problem it was found on
    (so a refining allocator can continue on it). If no round is feasible, the surrogate's right-hand
    side is bisected down until it is.
    """
    k = len(costs)
    mu = np.full(k, 1.0 / k)

    def solve(mu: np.ndarray, rhs: float = 1.0):
        surrogate = replace(problem, cost=surrogate_cost(costs, list(mu / np.asarray(limits))))
        w = allocator(surrogate, rhs)
        return w, surrogate, np.array([c.predict(w) / lim for c, lim in zip(costs, limits, strict=False)])

    best = None
    for _ in range(SURROGATE_ROUNDS):
        w, surrogate, ratios = solve(mu)
        if ratios.max() <= 1 + 1e-9:
            val = sum(problem.value(g, x) for g, x in w.items())
            if best is None or val > best[0]:
                best = (val, w, surrogate)
            if ratios.max() >= 0.99:
                break
        mu = mu * np.exp(SURROGATE_STEP * (ratios - 1))
        mu /= mu.sum()
    if best is not None:
        return best[1], best[2]
    lo, hi = 0.0, 1.0
    w, surrogate, _ = solve(mu, 1e-9)
    for _ in range(14):
        mid = (lo + hi) / 2
        wm, sm, ratios = solve(mu, mid)
        if ratios.max() <= 1 + 1e-9:
            lo, w, surrogate = mid, wm, sm
        else:
            hi = mid
    return w, surrogate
