import numpy as np
import pytest
import torch
from tiny_models import tiny_cnn, tiny_resnet

from hwprune.groups.analysis import analyze, candidate_widths
from hwprune.importance import CRITERIA, compute_scores, normalized


def test_groups_of_a_plain_cnn_and_output_layer_is_kept():
    model, x = tiny_cnn()
    a = analyze(model, x)
    assert a.output_layer == "fc"
    assert {g.id: g.size for g in a.groups} == {"conv1": 16, "conv2": 24}
    layers = {la.name: la for la in a.layers}
    assert (layers["conv1"].in_group, layers["conv1"].out_group) == (None, "conv1")
    assert (layers["conv2"].in_group, layers["conv2"].out_group) == ("conv1", "conv2")
    assert (layers["fc"].in_group, layers["fc"].out_group) == ("conv2", None)


def test_residual_add_couples_stem_and_block_output():
    model, x = tiny_resnet()
    a = analyze(model, x)
    sizes = {g.id: g.size for g in a.groups}
    assert len(a.groups) == 2 and sorted(sizes.values()) == [8, 16]
    residual = next(g for g in a.groups if g.size == 16)
    outs = {name for name, side in residual.members if side == "out"}
    assert {"stem", "b"} <= outs


def test_candidate_widths():
    assert candidate_widths(16, 0.1) == list(range(2, 17))
    c = candidate_widths(256, 0.1)
    assert c[0] == 26 and c[-1] == 256 and all(w % 8 == 0 for w in c[1:])
    assert len(candidate_widths(4096)) <= 66


def test_l1_matches_hand_computation():
    model, x = tiny_cnn()
    a = analyze(model, x)
    s = compute_scores(model, a, "l1")
    # conv1's channel c owns conv1.weight[c], bn1.{weight,bias}[c] and conv2.weight[:, c].
    w = model.conv1.weight.abs().sum((1, 2, 3)) + model.bn1.weight.abs() + model.bn1.bias.abs()
    w = w + model.conv2.weight.abs().sum((0, 2, 3))
    np.testing.assert_allclose(s["conv1"], w.detach().double().numpy(), rtol=1e-6)


def test_taylor_matches_hand_computation():
    model, x = tiny_cnn()
    a = analyze(model, x)
    y = torch.tensor([0, 1])
    s = compute_scores(model, a, "taylor", [(x, y)])
    model.zero_grad()
    model.eval()  # criteria score in eval mode (BatchNorm on its running statistics)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    expect = (model.conv2.weight * model.conv2.weight.grad).abs().sum((1, 2, 3))
    expect += (model.conv2.bias * model.conv2.bias.grad).abs()
    expect += (model.bn2.weight * model.bn2.weight.grad).abs() + (model.bn2.bias * model.bn2.bias.grad).abs()
    expect += (model.fc.weight * model.fc.weight.grad).abs().sum(0)
    np.testing.assert_allclose(s["conv2"], expect.detach().double().numpy(), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_scores_every_channel(name):
    model, x = tiny_resnet()
    a = analyze(model, x)
    s = compute_scores(model, a, name, [(x, torch.tensor([0, 3]))])
    for g in a.groups:
        assert s[g.id].shape == (g.size,) and np.all(np.isfinite(s[g.id])) and np.all(s[g.id] >= 0)
    n = normalized(s, name)
    if not CRITERIA[name].comparable:
        for g in a.groups:
            assert n[g.id].mean() == pytest.approx(1.0)


def test_bn_recalibration_matches_batch_statistics():
    from hwprune.apply.channels import recalibrate_bn

    model, x = tiny_cnn()
    model.eval()
    batches = [(torch.randn(4, 3, 8, 8) * 3 + 1, None) for _ in range(3)]
    recalibrate_bn(model, batches)
    feats = torch.cat([model.conv1(b) for b, _ in batches])
    torch.testing.assert_close(model.bn1.running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert model.bn1.momentum == 0.1 and not model.training


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
    from test_allocate import _synthetic_problem

    from hwprune.pipeline.sensitivity import LossProbe, group_sensitivity, refine_by_loss
    from hwprune.plan.allocate import ALLOCATORS

    problem = _synthetic_problem(tiny_cnn)
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
