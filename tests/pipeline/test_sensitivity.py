import numpy as np
import torch
from helpers import synthetic_problem
from tiny_models import tiny_cnn

from hwprune.groups.analysis import analyze
from hwprune.importance import compute_scores


def test_sensitivity_is_zero_at_full_width_and_monotone():
    from hwprune.pipeline.sensitivity import LossProbe, group_sensitivity

    model, x = tiny_cnn()
    a = analyze(model, x)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))) for _ in range(2)]
    probe = LossProbe(model, x, a, compute_scores(model, a, "l1"), batches[:1], batches[1:])
    values = group_sensitivity(probe, a, progress=False)
    for g in a.groups:
        v = values[g.id]
        assert v.shape == (len(g.candidates),) and v[-1] == 0.0 and np.all(v <= 0)
        assert np.all(np.diff(v) >= -1e-12)  # wider never loses more


def test_refine_by_loss_never_worsens_the_loss_and_respects_the_target():

    from hwprune.pipeline.sensitivity import LossProbe, group_sensitivity, refine_by_loss
    from hwprune.plan.allocate import ALLOCATORS

    problem = synthetic_problem(tiny_cnn)
    model, x = tiny_cnn()
    a = problem.cost.analysis
    torch.manual_seed(1)
    bn = [(torch.randn(8, 3, 8, 8), None) for _ in range(2)]
    ev = [(torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))) for _ in range(2)]
    probe = LossProbe(model, x, a, compute_scores(model, a, "l1"), bn, ev)
    problem.widths_value = group_sensitivity(probe, a, progress=False)
    target = 0.5 * problem.cost.predict(problem.cost.dense_widths())
    start = ALLOCATORS["hw"](problem, target)
    got = refine_by_loss(problem, probe, [start, ALLOCATORS["uniform"](problem, target)], target, max_evals=30)
    assert problem.cost.predict(got) <= target
    assert probe(got) <= probe(start)
