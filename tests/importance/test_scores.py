import numpy as np
import pytest
import torch
from tiny_models import tiny_cnn, tiny_resnet

from hwprune.groups.analysis import analyze
from hwprune.importance import CRITERIA, compute_scores, normalized


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
