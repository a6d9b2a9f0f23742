"""Magnitude, Wanda and SparseGPT block by block on calibration inputs: patterns, updates, sequential inputs."""

import pytest
import torch
import torch.nn as nn

from hwprune.apply.masks import get_masks, parse_pattern
from hwprune.apply.sequential import (
    SequentialConfig,
    find_blocks,
    prune_sequential,
    reconstruction_error,
    sparsegpt,
)
from hwprune.core.errors import HwpruneError

transformers = pytest.importorskip("transformers")

from helpers import tiny_llama  # noqa: E402


def calibration(n=4, seq=24, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (2, seq), generator=g)} for _ in range(n)]


def block_linears(model):
    return {n: m for n, m in model.named_modules() if n.startswith("model.layers.") and isinstance(m, nn.Linear)}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_half_of_every_layer_and_only_the_blocks(method):
    model = tiny_llama()
    masks = prune_sequential(model, calibration(), SequentialConfig(method=method, sparsity=0.5, blocksize=32))
    linears = block_linears(model)
    assert set(masks) == set(linears) and len(masks) == 14  # 7 Linears in each of 2 decoder layers
    for name, keep in masks.items():
        w = linears[name].weight
        assert int(keep.sum()) == w.numel() // 2
        assert bool((w[~keep] == 0).all())
        if method == "wanda":  # compared per output row: half of every row
            assert (keep.sum(1) == w.shape[1] // 2).all()
    assert set(get_masks(model)) == set(masks)  # kept through fine-tuning by apply_masks' hooks
    assert float((model.lm_head.weight == 0).float().mean()) == 0.0
    assert float((model.model.embed_tokens.weight == 0).float().mean()) == 0.0


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_two_of_four_in_every_group(method):
    model = tiny_llama()
    masks = prune_sequential(model, calibration(), SequentialConfig(method=method, pattern="2:4", sparsity=None))
    linears = block_linears(model)
    for name, keep in masks.items():
        groups = keep.reshape(keep.shape[0], -1, 4)
        assert (groups.sum(-1) == 2).all()
        assert bool((linears[name].weight[~keep] == 0).all())
        assert linears[name].hwprune_sparsity == "2:4"


def correlated_inputs(n=512, d=64, seed=0):
    """Tokens whose features are correlated (a random mixing) with unequal scales, as a layer's inputs are."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g)
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    return (z @ mix) * torch.linspace(0.2, 3.0, d)


@pytest.mark.parametrize("pattern,blocksize", [("unstructured", 128), ("unstructured", 16), ("2:4", 128)])
def test_sparsegpt_reconstructs_a_layer_better_than_magnitude_and_wanda(pattern, blocksize):
    torch.manual_seed(0)
    w = torch.randn(48, 64)
    x = correlated_inputs()
    h = 2 * x.T @ x / len(x)
    pat = parse_pattern(pattern)
    new, keep = sparsegpt(w, h, pat, 0.5, blocksize=blocksize)
    assert int(keep.sum()) == w.numel() // 2 and bool((new[~keep] == 0).all())

    def best_by(score):  # keep-mask of the same pattern from a score
        if pat.kind == "nm":
            g = score.reshape(48, -1, 4)
            k = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.topk(2, -1).indices, True)
            return k.reshape(48, 64)
        k = torch.zeros(w.numel(), dtype=torch.bool)
        k[score.flatten().topk(w.numel() // 2).indices] = True
        return k.reshape(w.shape)

    err = {
        "sparsegpt": reconstruction_error(w, new, x),
        "magnitude": reconstruction_error(w, w * best_by(w.abs()), x),
        "wanda": reconstruction_error(w, w * best_by(w.abs() * x.norm(dim=0)), x),
    }
    assert err["sparsegpt"] < 0.9 * err["magnitude"], err
    if blocksize >= 64:  # lazy blocks of 16 fix the sparsity of every 16 columns: Wanda chooses columns freely
        assert err["sparsegpt"] < 0.9 * err["wanda"], err


def test_sparsegpt_without_pruning_is_the_identity():
    w = torch.randn(8, 16)
    x = correlated_inputs(256, 16)
    new, keep = sparsegpt(w, 2 * x.T @ x / 256, parse_pattern("unstructured"), 0.0)
    torch.testing.assert_close(new, w)
    assert bool(keep.all())


def inputs_of(model, layer, batches):
    got = []
    h = layer.register_forward_hook(lambda m, a, o: got.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for b in batches:
            model(**b)
    h.remove()
    return torch.cat(got)


def test_each_block_is_pruned_on_the_inputs_of_the_already_pruned_blocks():
    cal = calibration()
    seq_model, dense_model = tiny_llama(), tiny_llama()
    cfg = SequentialConfig(method="wanda", sparsity=0.5)
    seq = prune_sequential(seq_model, cal, cfg)
    indep = prune_sequential(dense_model, cal, SequentialConfig(method="wanda", sparsity=0.5, sequential=False))
    first = [n for n in seq if n.startswith("model.layers.0.")]
    second = [n for n in seq if n.startswith("model.layers.1.")]
    assert all(torch.equal(seq[n], indep[n]) for n in first)  # block 0 sees the same (embedding) inputs
    assert not all(torch.equal(seq[n], indep[n]) for n in second)
    # Block 1's Wanda mask is the one its inputs in the pruned model give (those of the pruned block 0).
    q = seq_model.model.layers[1].self_attn.q_proj
    x = inputs_of(seq_model, q, cal)
    dense_q = tiny_llama().model.layers[1].self_attn.q_proj.weight.detach()
    score = dense_q.abs() * x.double().norm(dim=0).float()
    keep = torch.ones_like(score, dtype=torch.bool).scatter_(1, score.topk(32, 1, largest=False).indices, False)
    assert torch.equal(seq["model.layers.1.self_attn.q_proj"], keep)


def test_blocks_are_the_decoder_layers():
    name, blocks = find_blocks(tiny_llama())
    assert name == "model.layers" and len(blocks) == 2
    with pytest.raises(HwpruneError, match="no list of blocks"):
        find_blocks(nn.Sequential(nn.Linear(4, 4)))


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"method": "obs"}, "choose one of"),
        ({"pattern": "block4x4"}, "unstructured or N:M"),
        ({"sparsity": 1.5}, "sparsity"),
        ({"group": "column"}, "choose one of"),
        ({"damp": -0.1}, "damp"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, needle):
    with pytest.raises(HwpruneError, match=needle):
        SequentialConfig(**kwargs)
