"""FLAP's fluctuation criterion: sample variance of a consumer's input channel x its squared column norm."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from hwprune.groups.analysis import analyze
from hwprune.importance import CRITERIA, compute_scores
from hwprune.importance.fluctuation import column_norms_sq


def two_linears():
    """fc1 (3 -> 4) writes the group's 4 channels, fc2 (4 -> 2) reads them; fc1 is set by hand."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 0], [1.0, 1.0, 0]]))
        model[0].bias.copy_(torch.tensor([0.0, 5.0, 1.0, -3.0]))
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 0.5], [0.0, -1.0, 1.0, 0.5]]))
    return model.eval()


def test_scores_equal_the_formula_on_known_inputs():
    model = two_linears()
    # two batches of 3 samples: fc2's input column j is known by hand (fc1 is diagonal-ish, its bias a shift)
    x1 = torch.tensor([[1.0, 0, 7], [2.0, 1, 7], [3.0, 0, 7]])
    x2 = torch.tensor([[4.0, 1, 7], [5.0, 0, 7], [6.0, 1, 7]])
    cols = torch.cat([x1, x2])
    h = torch.stack([cols[:, 0], 2 * cols[:, 1], torch.zeros(6), cols[:, 0] + cols[:, 1]], 1)  # fc2's inputs
    var = h.double().var(0, unbiased=True)  # sample variance: 3.5, 4 * 0.3, 0, ...
    assert var[0] == pytest.approx(3.5) and var[1] == pytest.approx(1.2) and var[2] == 0
    norms = torch.tensor([1.0 + 0, 4 + 1, 9 + 1, 0.25 + 0.25], dtype=torch.float64)
    a = analyze(model, x1)
    s = compute_scores(model, a, "fluctuation", [(x1, None), (x2, None)])
    (gid,) = [g.id for g in a.groups]
    np.testing.assert_allclose(s[gid], (var * norms).numpy(), rtol=1e-12)
    assert s[gid][2] == 0  # a constant input (bias only) is removable whatever its magnitude


def test_tokens_and_samples_pool_and_the_mean_does_not_matter():
    model = two_linears()
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))  # (batch, tokens, features)
    a = analyze(model, x)
    (gid,) = [g.id for g in a.groups]
    s = compute_scores(model, a, "fluctuation", [(x, None)])
    with torch.no_grad():
        h = model[0](x).reshape(-1, 4).double()
    np.testing.assert_allclose(s[gid], (h.var(0) * column_norms_sq(model[1])).numpy(), rtol=1e-10)
    with torch.no_grad():
        model[0].bias.add_(100.0)  # every input shifted: the variance, hence the score, is the same
    np.testing.assert_allclose(
        compute_scores(model, a, "fluctuation", [(x, None)])[gid], s[gid], rtol=1e-4
    )  # fp32 inputs


def test_conv_consumer_reads_channels_over_positions_and_filters():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Conv2d(3, 4, 3, padding=1)).eval()
    x = torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    a = analyze(model, x)
    gid = [g.id for g in a.groups if g.id == "0"][0]
    s = compute_scores(model, a, "fluctuation", [(x, None)])
    with torch.no_grad():
        h = model[0](x).transpose(0, 1).reshape(3, -1).double()
    norms = model[1].weight.detach().double().pow(2).sum((0, 2, 3))
    np.testing.assert_allclose(s[gid], (h.var(1) * norms).numpy(), rtol=1e-10)


transformers = pytest.importorskip("transformers")


def test_llama_ffn_neurons_and_heads_are_read_at_down_proj_and_o_proj():
    cfg = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        intermediate_size=48, vocab_size=40,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    batches = [({"input_ids": torch.randint(0, 40, (2, 10))}, None) for _ in range(2)]
    a = analyze(model, batches[0][0])
    s = compute_scores(model, a, "fluctuation", batches)
    seen = {}
    layer = model.model.layers[0]

    def keep(name):
        def hook(mod, args, out):
            seen.setdefault(name, []).append(args[0].reshape(-1, args[0].shape[-1]).double())

        return hook

    hs = [
        layer.mlp.down_proj.register_forward_hook(keep("down")),
        layer.self_attn.o_proj.register_forward_hook(keep("o")),
    ]
    with torch.no_grad():
        for x, _ in batches:
            model(**x)
    for h in hs:
        h.remove()
    for gid, name, mod in [
        ("model.layers.0.mlp.up_proj", "down", layer.mlp.down_proj),
        ("model.layers.0.self_attn.q_proj", "o", layer.self_attn.o_proj),
    ]:
        expect = torch.cat(seen[name]).var(0) * mod.weight.detach().double().pow(2).sum(0)
        np.testing.assert_allclose(s[gid], expect.numpy(), rtol=1e-6)


def test_registered_as_a_channel_criterion_that_needs_data():
    c = CRITERIA["fluctuation"]
    assert c.granularities == ("channel",) and c.needs_data and c.unit is not None and not c.comparable
