"""Every importance criterion against a hand computation, at channel level and at weight level."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tiny_models import tiny_cnn, tiny_resnet

from hwprune.core.errors import HwpruneError
from hwprune.groups.analysis import analyze
from hwprune.importance import CRITERIA, WEIGHT, compute_scores, list_criteria, weight_scores


class TwoLayer(nn.Module):
    def __init__(self, d_in=3, hidden=4, classes=2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def two_layer():
    torch.manual_seed(0)
    return TwoLayer(), torch.randn(4, 3)


def batches(x_shape, classes, n=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(x_shape, generator=gen), torch.randint(0, classes, (x_shape[0],), generator=gen)) for _ in range(n)
    ]


def mean_loss(model, data):
    with torch.no_grad():
        return float(np.mean([float(F.cross_entropy(model(x), y)) for x, y in data]))


def test_list_criteria_covers_the_registry():
    listed = {name: (desc, gran) for name, desc, gran in list_criteria()}
    expected = {"l1", "l2", "redundancy", "gradient", "taylor", "activation", "apoz", "loss-change", "hessian"}
    assert expected | {"wanda", "random"} <= set(listed)
    assert all(desc and "channel" in gran for desc, gran in listed.values())
    assert all(len(CRITERIA[n].aggregation) > 40 for n in listed)  # each states its group rule
    unit_only = {n for n, (_, gran) in listed.items() if WEIGHT not in gran}
    assert unit_only == {"redundancy", "activation", "apoz", "loss-change", "fluctuation"}


def test_redundancy_by_hand():
    model, x = two_layer()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0, 0, 2.0], [0.1, 0, 0]]))
        model.fc1.bias.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
        model.fc2.weight.copy_(torch.tensor([[1.0, 0, 0, 0.2], [0, 1.0, 1.0, 0]]))
    a = analyze(model, x)
    # unit i owns fc1.weight[i], fc1.bias[i] and fc2.weight[:, i]
    s = np.array([1 + 1, 0.25 + 0.25 + 1 + 1, 4 + 1, 0.01 + 0.04])
    got = compute_scores(model, a, "redundancy")["fc1"]
    np.testing.assert_allclose(got, s / (s + 1.0), rtol=1e-6)
    got = compute_scores(model, a, "redundancy", params={"lambda": 0.5})["fc1"]
    np.testing.assert_allclose(got, s / (s + 0.5), rtol=1e-6)


def test_wanda_linear_is_weight_times_input_column_norm():
    model, x = two_layer()
    data = batches((5, 3), 2)
    s = weight_scores(model, "wanda", data)
    x1 = torch.cat([b for b, _ in data])
    x2 = torch.relu(model.fc1(x1)).detach()
    torch.testing.assert_close(s["fc1"], model.fc1.weight.detach().abs() * x1.norm(dim=0))
    torch.testing.assert_close(s["fc2"], model.fc2.weight.detach().abs() * x2.norm(dim=0))
    # Channel level: a hidden unit sums its fc1 row (times the input norms) and its fc2 column (times its own norm).
    ch = compute_scores(model, analyze(model, x), "wanda", data)["fc1"]
    expect = s["fc1"].sum(1) + s["fc2"].sum(0)
    np.testing.assert_allclose(ch, expect.double().numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    "conv,shape",
    [
        (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (3, 4, 7, 6)),
        (nn.Conv1d(3, 5, 3, padding=2, dilation=2), (2, 3, 9)),
    ],
)
def test_wanda_conv_is_weight_times_im2col_column_norm(conv, shape):
    torch.manual_seed(0)
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(2))
    data = [(torch.randn(shape), torch.tensor([0, 1] * (shape[0] // 2) + [0] * (shape[0] % 2))) for _ in range(2)]
    model(data[0][0])
    s = weight_scores(model, "wanda", data, layers=["0"])["0"]
    x = torch.cat([b for b, _ in data])
    k, p, st, d = conv.kernel_size, conv.padding, conv.stride, conv.dilation
    if x.dim() == 3:  # conv1d as a conv2d of height 1
        x, k, p, st, d = x.unsqueeze(2), (1, *k), (0, *p), (1, *st), (1, *d)
    cols = F.unfold(x, k, dilation=d, padding=p, stride=st)  # (N, C * prod(k), L)
    norms = cols.pow(2).sum((0, 2)).sqrt().reshape(conv.in_channels, *conv.kernel_size)
    cpg, opg = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    expect = torch.stack([norms[(o // opg) * cpg : (o // opg + 1) * cpg] for o in range(conv.out_channels)])
    torch.testing.assert_close(s, conv.weight.detach().abs() * expect, rtol=1e-5, atol=1e-6)


def test_gradient_and_taylor_match_autograd_on_one_batch():
    model, x = tiny_cnn()
    model.eval()
    a = analyze(model, x)
    y = torch.tensor([0, 3])
    g = weight_scores(model, "gradient", [(x, y)])
    t = weight_scores(model, "taylor", [(x, y)])
    ch = compute_scores(model, a, "gradient", [(x, y)])["conv1"]
    F.cross_entropy(model(x), y).backward()
    for name in ("conv1", "conv2", "fc"):
        w = getattr(model, name).weight
        torch.testing.assert_close(g[name], w.grad.abs())
        torch.testing.assert_close(t[name], (w * w.grad).abs().detach())
    # Channel level: the sum of |dL/dw| over the slices conv1's channels own.
    expect = model.conv1.weight.grad.abs().sum((1, 2, 3)) + model.bn1.weight.grad.abs() + model.bn1.bias.grad.abs()
    expect += model.conv2.weight.grad.abs().sum((0, 2, 3))
    np.testing.assert_allclose(ch, expect.double().numpy(), rtol=1e-5)


def test_hessian_is_half_mean_squared_gradient_times_w_squared():
    model, x = tiny_cnn()
    model.eval()  # analyze() runs a forward pass: in train mode it would move the BN statistics
    a = analyze(model, x)
    data = batches((3, 3, 8, 8), 5, n=3)
    s = weight_scores(model, "hessian", data)
    ch = compute_scores(model, a, "hessian", data)["conv2"]
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    for xb, yb in data:
        model.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        for n, p in params.items():
            fisher[n] += p.grad.pow(2) / len(data)
    obd = {n: 0.5 * fisher[n] * params[n].detach().pow(2) for n in params}
    for name in ("conv1", "conv2", "fc"):
        torch.testing.assert_close(s[name], obd[f"{name}.weight"], rtol=1e-5, atol=1e-12)
    expect = obd["conv2.weight"].sum((1, 2, 3)) + obd["conv2.bias"] + obd["bn2.weight"] + obd["bn2.bias"]
    expect += obd["fc.weight"].sum(0)
    np.testing.assert_allclose(ch, expect.double().numpy(), rtol=1e-4)


def test_apoz_on_a_relu_layer_with_known_inputs():
    model = TwoLayer(d_in=2, hidden=3)
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1.0, 0], [0, 1.0], [1.0, 1.0]]))
        model.fc1.bias.zero_()
    x = torch.tensor([[1.0, -1], [2, -1], [3, 1], [-1, -2]])
    a = analyze(model, x[:2])
    # fc1 outputs: unit0 1, 2, 3, -1; unit1 -1, -1, 1, -2; unit2 0, 1, 4, -3 (0 is zero after the ReLU)
    got = compute_scores(model, a, "apoz", [(x[:2], torch.tensor([0, 1])), (x[2:], torch.tensor([1, 0]))])
    np.testing.assert_allclose(got["fc1"], [0.75, 0.25, 0.5])


def test_activation_and_apoz_are_measured_after_the_roots_batchnorm():
    model, x = tiny_cnn()
    a = analyze(model, x)
    data = batches((4, 3, 8, 8), 5)
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)  # BN must matter: eval statistics away from 0/1
        model.eval()
        out = torch.cat([model.bn1(model.conv1(b)) for b, _ in data])
    model.train()
    act = compute_scores(model, a, "activation", data)["conv1"]
    apoz = compute_scores(model, a, "apoz", data)["conv1"]
    np.testing.assert_allclose(act, out.abs().mean((0, 2, 3)).double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(apoz, (out > 0).double().mean((0, 2, 3)).numpy(), rtol=1e-9)
    assert model.training  # the caller's mode comes back


def test_activation_mean_on_a_linear_unit():
    model, x = two_layer()
    data = batches((6, 3), 2)
    got = compute_scores(model, analyze(model, x), "activation", data)["fc1"]
    with torch.no_grad():
        expect = torch.cat([model.fc1(b) for b, _ in data]).abs().mean(0)
    np.testing.assert_allclose(got, expect.double().numpy(), rtol=1e-5)


def _zeroed_rise(model, data, zero) -> np.ndarray:
    """Loss rise per channel with the channel removed by editing weights (independent of hooks)."""
    base = mean_loss(model, data)
    rises = []
    for c in range(zero.size):
        m = copy.deepcopy(model)
        with torch.no_grad():
            zero(m, c)
        rises.append(mean_loss(m, data) - base)
    return np.maximum(np.array(rises), 0.0)


def test_loss_change_equals_loss_difference_with_the_unit_zeroed():
    model, x = two_layer()
    model.eval()
    data = batches((4, 3), 2, n=3)

    def zero_fc1(m, c):
        m.fc1.weight[c] = 0
        m.fc1.bias[c] = 0

    zero_fc1.size = 4
    got = compute_scores(model, analyze(model, x), "loss-change", data, params={"batches": 2, "max_batch": 8})
    np.testing.assert_allclose(got["fc1"], _zeroed_rise(model, data[:2], zero_fc1), atol=1e-6)
    assert np.any(got["fc1"] > 0)


def test_loss_change_zeroes_after_batchnorm_and_across_a_residual_add():
    model, x = tiny_cnn()
    model.eval()
    data = batches((2, 3, 8, 8), 5)

    def zero_bn1(m, c):
        m.bn1.weight[c] = 0
        m.bn1.bias[c] = 0

    zero_bn1.size = 16
    got = compute_scores(model, analyze(model, x), "loss-change", data, params={"max_batch": 6})
    np.testing.assert_allclose(got["conv1"], _zeroed_rise(model, data, zero_bn1), atol=1e-6)
    assert np.count_nonzero(got["conv1"]) >= 4

    model, x = tiny_resnet()
    model.eval()
    a = analyze(model, x)
    trunk = next(g.id for g in a.groups if g.size == 16)

    def zero_trunk(m, c):  # the channel leaves the stem and the residual branch that adds into it
        for layer in (m.stem, m.b):
            layer.weight[c] = 0
            layer.bias[c] = 0

    zero_trunk.size = 16
    data = batches((2, 3, 8, 8), 4)
    got = compute_scores(model, a, "loss-change", data)
    np.testing.assert_allclose(got[trunk], _zeroed_rise(model, data, zero_trunk), atol=1e-6)
    assert np.count_nonzero(got[trunk]) >= 4


def test_random_is_seeded():
    model, _ = tiny_cnn()
    a, b = weight_scores(model, "random", None, seed=3), weight_scores(model, "random", None, seed=3)
    c = weight_scores(model, "random", None, seed=4)
    torch.testing.assert_close(a["fc"], b["fc"])
    assert not torch.equal(a["fc"], c["fc"]) and float(a["fc"].min()) >= 0 and float(a["fc"].max()) < 1


def test_weight_scores_shapes_and_layer_selection():
    model, x = tiny_cnn()
    data = [(x, torch.tensor([0, 1]))]
    for name in sorted(n for n, c in CRITERIA.items() if WEIGHT in c.granularities):
        s = weight_scores(model, name, data)
        assert {k: tuple(v.shape) for k, v in s.items()} == {
            "conv1": (16, 3, 3, 3),
            "conv2": (24, 16, 3, 3),
            "fc": (5, 24),
        }
        assert all(v.dtype == torch.float32 and bool((v >= 0).all()) for v in s.values())
    assert set(weight_scores(model, "l1", None, layers=["fc"])) == {"fc"}
    with pytest.raises(HwpruneError, match="not a Conv/Linear"):
        weight_scores(model, "l1", None, layers=["bn1"])


@pytest.mark.parametrize("name", ["redundancy", "activation", "apoz", "loss-change"])
def test_unit_criteria_refuse_weight_level(name):
    model, x = tiny_cnn()
    with pytest.raises(HwpruneError, match=f"'{name}' scores whole units.*channel"):
        weight_scores(model, name, [(x, torch.tensor([0, 1]))])


def test_unknown_or_bad_params_are_errors():
    model, x = two_layer()
    a = analyze(model, x)
    with pytest.raises(HwpruneError, match="no parameter 'lambda'; it takes no parameters"):
        compute_scores(model, a, "l1", params={"lambda": 1.0})
    with pytest.raises(HwpruneError, match="no parameter 'lamda'.*lambda"):
        compute_scores(model, a, "redundancy", params={"lamda": 1.0})
    with pytest.raises(HwpruneError, match="positive"):
        compute_scores(model, a, "redundancy", params={"lambda": -1})
    with pytest.raises(HwpruneError, match="whole number"):
        compute_scores(model, a, "loss-change", [(x, torch.tensor([0, 1, 0, 1]))], params={"batches": 1.5})
    with pytest.raises(HwpruneError, match="no parameter"):
        weight_scores(model, "wanda", [(x, torch.tensor([0, 1, 0, 1]))], params={"alpha": 2})


def test_data_criteria_without_data_say_so():
    model, x = two_layer()
    a = analyze(model, x)
    for name in ("activation", "loss-change", "taylor", "wanda"):
        with pytest.raises(HwpruneError, match=f"'{name}' needs calibration data"):
            compute_scores(model, a, name, None)
    with pytest.raises(HwpruneError, match="needs calibration data"):
        weight_scores(model, "hessian", None)


def test_wanda_names_a_layer_that_never_ran():
    model, x = two_layer()
    model.unused = nn.Linear(3, 3)
    data = [(x, torch.tensor([0, 1, 0, 1]))]
    with pytest.raises(HwpruneError, match="unused"):
        weight_scores(model, "wanda", data)
    assert set(weight_scores(model, "wanda", data, layers=["fc1", "fc2"])) == {"fc1", "fc2"}


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_scoring_leaves_no_grads_hooks_or_mode_change(name):
    model, x = tiny_resnet()
    a = analyze(model, x)
    model.train()
    data = [(x, torch.tensor([0, 3]))]
    compute_scores(model, a, name, data)
    if WEIGHT in CRITERIA[name].granularities:
        weight_scores(model, name, data)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


def test_a_callers_own_gradients_are_left_as_they_were():
    model, x = tiny_cnn()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    weight_scores(model, "taylor", [(x, torch.tensor([0, 1]))])
    assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight)) and model.conv1.weight.grad is None


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_gives_the_same_scores_on_cuda(name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convs would differ by ~1e-3
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model, x = tiny_resnet()
    model.eval()
    a = analyze(model, x)
    data = batches((4, 3, 8, 8), 4)  # CPU batches: the scorer moves them to the model's device
    cpu = compute_scores(model, a, name, data)
    gpu_model = copy.deepcopy(model).cuda()
    gpu = compute_scores(gpu_model, analyze(gpu_model, x.cuda()), name, data)
    for gid, v in cpu.items():
        np.testing.assert_allclose(gpu[gid], v, rtol=1e-4, atol=1e-6)
    if WEIGHT in CRITERIA[name].granularities:
        w_cpu, w_gpu = weight_scores(model, name, data), weight_scores(gpu_model, name, data)
        for n, v in w_cpu.items():
            assert w_gpu[n].is_cuda
            torch.testing.assert_close(w_gpu[n].cpu(), v, rtol=1e-4, atol=1e-6)
