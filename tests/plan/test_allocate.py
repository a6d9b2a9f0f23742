import itertools

import numpy as np
import pytest
from helpers import synthetic_problem
from tiny_models import tiny_cnn, tiny_resnet, tiny_resnet3

from hwprune.groups.analysis import analyze
from hwprune.plan.allocate import ALLOCATORS, mckp


def brute_force(values, costs, budget):
    best, best_pick = -np.inf, None
    for pick in itertools.product(*[range(len(v)) for v in values]):
        c = sum(costs[k][j] for k, j in enumerate(pick))
        v = sum(values[k][j] for k, j in enumerate(pick))
        if c <= budget + 1e-9 and v > best:
            best, best_pick = v, pick
    return best, best_pick


@pytest.mark.parametrize("seed", range(25))
def test_mckp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_groups, n_items = rng.integers(2, 5), rng.integers(2, 6)
    values = [np.sort(rng.random(n_items)) for _ in range(n_groups)]
    costs = [np.sort(rng.integers(1, 20, n_items)).astype(float) for _ in range(n_groups)]
    lo = sum(c.min() for c in costs)
    budget = float(rng.integers(int(lo), int(sum(c.max() for c in costs)) + 1))
    # Integer costs with one bin per unit make the DP exact.
    picks = mckp(values, costs, budget, bins=max(1, int(budget - lo)))
    best, _ = brute_force(values, costs, budget)
    assert picks is not None
    assert sum(costs[k][j] for k, j in enumerate(picks)) <= budget
    assert sum(values[k][j] for k, j in enumerate(picks)) == pytest.approx(best)


def test_mckp_infeasible_returns_none():
    assert mckp([np.array([1.0, 2.0])], [np.array([5.0, 6.0])], 4.0) is None


def test_mckp_never_exceeds_budget_with_coarse_bins():
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = [rng.random(6) for _ in range(5)]
        costs = [rng.random(6) for _ in range(5)]
        budget = sum(c.min() for c in costs) + rng.random()
        picks = mckp(values, costs, budget, bins=7)
        assert sum(costs[k][j] for k, j in enumerate(picks)) <= budget + 1e-12


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
@pytest.mark.parametrize("model_fn", [tiny_cnn, tiny_resnet])
def test_allocators_meet_predicted_target(name, model_fn):
    problem = synthetic_problem(model_fn)
    dense = problem.cost.predict(problem.cost.dense_widths())
    for frac in (0.8, 0.5, 0.3):
        widths = ALLOCATORS[name](problem, frac * dense)
        assert set(widths) == set(problem.candidates)
        assert problem.cost.predict(widths) <= frac * dense + 1e-12
        for g, w in widths.items():
            assert problem.candidates[g][0] <= w <= problem.cost.sizes[g]


@pytest.mark.parametrize("name", ["uniform", "global", "hw"])
def test_an_unreachable_target_gives_the_narrowest_plan_not_the_dense_one(name):
    """Below what the narrowest plan is predicted to cost, the answer is the narrowest plan: the closed loop
    measures it and refits. Uniform's bisection once fell back to the dense plan, and `hw`'s trust region
    around it then kept a 0.15 run at 0.7 of dense latency for all its iterations."""
    problem = synthetic_problem(tiny_cnn)
    problem.trust = 0.75 if name == "hw" else 0.0
    widths = ALLOCATORS[name](problem, 1e-12)
    narrow = problem.cost.predict(problem.min_widths())
    dense = problem.cost.predict(problem.cost.dense_widths())
    assert problem.cost.predict(widths) <= narrow + 0.05 * (dense - narrow)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("frac", [0.3, 0.5, 0.7])
def test_hw_allocator_is_optimal_on_small_instance(seed, frac):
    """Over all candidate combinations of a tiny CNN, `hw` finds the best value under the target."""
    problem = synthetic_problem(tiny_cnn, seed)
    gids = list(problem.candidates)
    dense = problem.cost.predict(problem.cost.dense_widths())
    target = frac * dense
    best = -np.inf
    for combo in itertools.product(*[problem.candidates[g] for g in gids]):
        w = dict(zip(gids, combo, strict=False))
        if problem.cost.predict(w) <= target:
            best = max(best, sum(problem.value(g, w[g]) for g in gids))
    got = ALLOCATORS["hw"](problem, target)
    got_value = sum(problem.value(g, got[g]) for g in gids)
    assert problem.cost.predict(got) <= target
    assert got_value >= best - 1e-6 * abs(best)


def test_hw_beats_uniform_when_one_group_is_cheap():
    # Every layer but the first costs a tenth as much per channel: hw keeps those wide, uniform cannot.
    model, x = tiny_cnn()
    first = analyze(model, x).layers[0].name
    cheap = {la.name: 0.1 for la in analyze(model, x).layers if la.name != first}
    problem = synthetic_problem(tiny_cnn, scale=cheap)
    dense = problem.cost.predict(problem.cost.dense_widths())
    hw = ALLOCATORS["hw"](problem, 0.5 * dense)
    uni = ALLOCATORS["uniform"](problem, 0.5 * dense)
    value = lambda w: sum(problem.value(g, w[g]) for g in w)  # noqa: E731
    assert problem.cost.predict(hw) <= 0.5 * dense
    assert value(hw) > 1.05 * value(uni), (hw, uni)


@pytest.mark.parametrize("model_fn", [tiny_cnn, tiny_resnet])
def test_hw_stays_in_its_trust_region_and_keeps_at_least_uniforms_value(model_fn):
    from dataclasses import replace

    problem = synthetic_problem(model_fn)
    dense = problem.cost.predict(problem.cost.dense_widths())
    value = lambda w: sum(problem.value(g, w[g]) for g in w)  # noqa: E731
    for frac in (0.6, 0.3):
        uni = ALLOCATORS["uniform"](problem, frac * dense)
        free = ALLOCATORS["hw"](problem, frac * dense)
        bound = ALLOCATORS["hw"](replace(problem, trust=0.75), frac * dense)
        assert problem.cost.predict(bound) <= frac * dense
        for g, w in bound.items():
            assert 0.75 * uni[g] - 1e-9 <= w <= uni[g] / 0.75 + 1e-9
        assert value(uni) - 1e-9 <= value(bound) <= value(free) + 1e-9
    # trust 1 leaves only the uniform plan
    assert ALLOCATORS["hw"](replace(problem, trust=1.0), 0.5 * dense) == ALLOCATORS["uniform"](problem, 0.5 * dense)


@pytest.mark.parametrize("seed", range(3))
def test_chain_terms_sum_to_the_prediction(seed):
    from hwprune.plan.allocate import _chain_order, chain_terms

    problem = synthetic_problem(tiny_cnn, seed)
    problem.cost.r0, problem.cost.r1 = 1e-4, 3e-4
    order = _chain_order(problem)
    assert order == ["conv1", "conv2"]
    const, unary, pair = chain_terms(problem, order)
    rng = np.random.default_rng(seed)
    for _ in range(10):
        idx = [rng.integers(len(problem.candidates[g])) for g in order]
        widths = {g: problem.candidates[g][i] for g, i in zip(order, idx, strict=False)}
        total = const + sum(u[i] for u, i in zip(unary, idx, strict=False)) + pair[1][idx[0], idx[1]]
        assert total == pytest.approx(problem.cost.predict(widths), rel=1e-12)


def test_hw_on_a_non_chain_graph_against_brute_force():
    """Trunk + 3 residual blocks: the linearised knapsack + exchange search; never below the baselines."""
    from hwprune.plan.allocate import _chain_order

    problem = synthetic_problem(tiny_resnet3)
    assert _chain_order(problem) is None
    gids = list(problem.candidates)
    dense = problem.cost.predict(problem.cost.dense_widths())
    value = lambda w: sum(problem.value(g, w[g]) for g in gids)  # noqa: E731
    for frac in (0.3, 0.5, 0.7):
        target = frac * dense
        best = max(
            (
                value(dict(zip(gids, c, strict=False)))
                for c in itertools.product(*[problem.candidates[g] for g in gids])
                if problem.cost.predict(dict(zip(gids, c, strict=False))) <= target
            ),
        )
        got = ALLOCATORS["hw"](problem, target)
        assert problem.cost.predict(got) <= target
        assert value(got) >= value(ALLOCATORS["uniform"](problem, target)) - 1e-9
        assert value(got) >= value(ALLOCATORS["global"](problem, target)) - 1e-9
        assert value(got) == pytest.approx(best, rel=1e-9), (frac, value(got), best)
