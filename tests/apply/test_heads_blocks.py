"""Head and block pruning (hwprune.granularity): exact equivalences, selection rules, save/load parity."""

import copy
import json

import pytest
import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock
from torchvision.models.vision_transformer import VisionTransformer

from hwprune.apply.blocks import block_criteria, find_blocks, prune_blocks, score_blocks
from hwprune.apply.heads import HeadPrunedAttention, find_heads, prune_heads, remove_heads, score_heads, select_heads
from hwprune.core.errors import HwpruneError
from hwprune.export.model import save_model
from hwprune.importance import CRITERIA, HEAD, list_criteria
from hwprune.zoo.specs import load_saved as load


class TinyAttention(nn.Module):
    """tokens -> linear -> two residual self-attention layers (4 heads of 4) -> mean -> classifier."""

    def __init__(self, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.ModuleList(nn.MultiheadAttention(16, 4, batch_first=True) for _ in range(layers))
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.embed(x)
        for a in self.attn:
            x = x + a(x, x, x, need_weights=False)[0]
        return self.fc(x.mean(1))


class TinyBlocks(nn.Module):
    """stem, two plain BasicBlocks, a downsampling BasicBlock, one more plain block, classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.blocks = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8), BasicBlock(8, 16, 2, down), BasicBlock(16, 16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def tiny_attention():
    torch.manual_seed(0)
    return TinyAttention().eval(), torch.randn(2, 5, 8)


def tiny_blocks():
    torch.manual_seed(0)
    m = TinyBlocks()
    with torch.no_grad():  # non-trivial BN statistics and affine terms, so blocks differ
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.1, 0.1)
    return m.eval(), torch.randn(2, 3, 8, 8)


def tiny_vit():
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=4, hidden_dim=16, mlp_dim=32)
    vit.heads.head = nn.Linear(16, 5)
    return vit.eval(), torch.randn(2, 3, 16, 16)


def _source(fn: str) -> dict:
    return {"kind": "file", "path": __file__, "function": fn}


HEAD_CRITERIA = sorted(n for n, c in CRITERIA.items() if HEAD in c.granularities and c.element is not None)


# ------------------------------------------------------------------------------------------------ heads


def test_head_pruned_attention_matches_multihead_attention():
    torch.manual_seed(1)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(12, 3, batch_first=batch_first).eval()
        ours = HeadPrunedAttention.from_module(mha).eval()
        q = torch.randn(2, 5, 12) if batch_first else torch.randn(5, 2, 12)
        kv = torch.randn(2, 7, 12) if batch_first else torch.randn(7, 2, 12)
        # A float padding mask like the float attn_mask: torch deprecates mixing a bool one with a float one.
        pad = torch.zeros(2, 7).masked_fill(torch.tensor([[False] * 6 + [True], [False] * 7]), float("-inf"))
        mask = torch.randn(5, 7)
        for kwargs in ({}, {"key_padding_mask": pad, "attn_mask": mask}, {"average_attn_weights": False}):
            for need in (True, False):
                want = mha(q, kv, kv, need_weights=need, **kwargs)
                got = ours(q, kv, kv, need_weights=need, **kwargs)
                torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
                if need:
                    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
        # unbatched (L, E) input
        torch.testing.assert_close(ours(q[0], kv[0], kv[0])[0], mha(q[0], kv[0], kv[0])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("criterion", HEAD_CRITERIA)
def test_head_removal_equals_zeroing_its_out_proj_columns(criterion):
    model, x = tiny_attention()
    pruned, info = prune_heads(model, x, criterion, ratio=0.5)
    assert info.heads_before == 8 and info.heads_after == 4
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for layer in info.layers:
            assert len(layer.removed) == 2 and len(layer.scores) == 4
            cols = [h * 4 + j for h in layer.removed for j in range(4)]
            zeroed.get_submodule(layer.name).out_proj.weight[:, cols] = 0
            m = pruned.get_submodule(layer.name)
            assert isinstance(m, HeadPrunedAttention)
            assert (m.embed_dim, m.num_heads, m.head_dim) == (16, 2, 4)
            assert m.out_proj.weight.shape == (16, 8) and m.q_proj.weight.shape == (8, 16)
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-5, atol=1e-6)
    # 4 heads x (q, k, v rows and biases: 3 * (4*16 + 4), out-proj columns: 16*4) removed per layer
    assert info.params_before - info.params_after == 2 * 2 * (3 * (4 * 16 + 4) + 16 * 4)


def test_l1_head_scores_are_the_sums_over_each_heads_slices():
    model, x = tiny_attention()
    mha = model.attn[0]
    with torch.no_grad():
        mha.out_proj.weight[:, 4:8] *= 0.01  # head 1 and head 3 become the two smallest
        mha.in_proj_weight[12:16] *= 0.01
        mha.in_proj_weight[16 + 12 : 16 + 16] *= 0.01
        mha.in_proj_weight[32 + 12 : 32 + 16] *= 0.01
    scores = score_heads(model, x, "l1")["attn.0"]
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    for h in range(4):
        rows = [o * 16 + h * 4 + j for o in range(3) for j in range(4)]
        want = w[rows].abs().sum() + b[rows].abs().sum() + mha.out_proj.weight[:, h * 4 : h * 4 + 4].abs().sum()
        assert scores[h].item() == pytest.approx(want.item(), rel=1e-6)
    _, info = prune_heads(model, x, "l1", ratio=0.5)
    assert info.layers[0].removed == [1, 3]


def test_zero_ratio_leaves_the_model_identical():
    model, x = tiny_attention()
    pruned, info = prune_heads(model, x, "l2", ratio=0.0)
    assert all(isinstance(m, nn.MultiheadAttention) for m in pruned.attn)
    assert info.heads_after == info.heads_before == 8
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))
    pruned, info = prune_blocks(*tiny_blocks(), "l1", ratio=0.0)
    assert info.removed == [] and info.removable == 3


def test_global_scope_keeps_one_head_per_layer():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([5.0, 6.0, 7.0, 8.0])}
    # 6 of 8 go: "a" may lose 3 (its last head stays even though it is below all of "b"), then b's lowest 3
    assert select_heads(scores, 0.75, "global", comparable=True) == {"a": [0, 1, 2], "b": [0, 1, 2]}
    # Non-comparable scores are divided by each layer's mean first: both layers then look alike
    assert select_heads(scores, 0.5, "global", comparable=False) == {"a": [0, 1], "b": [0, 1]}
    assert select_heads(scores, 0.5, "layer", comparable=True) == {"a": [0, 1], "b": [0, 1]}

    model, x = tiny_attention()
    pruned, info = prune_heads(model, x, "taylor", ratio=0.9, scope="global")
    assert [r.heads_after for r in info.layers] == [1, 1]  # floor(0.9 * 8) = 7 wanted, 6 allowed
    with torch.no_grad():
        assert pruned(x).shape == (2, 3)


def test_head_pruning_on_torchvision_vit_and_save_load_parity(tmp_path):
    model, x = tiny_vit()
    assert [a.name for a in find_heads(model)] == [
        "encoder.layers.encoder_layer_0.self_attention",
        "encoder.layers.encoder_layer_1.self_attention",
    ]
    pruned, info = prune_heads(model, x, "l2", ratio=0.5, scope="global")
    assert info.heads_after == 4
    save_model(pruned, tmp_path / "m", _source("tiny_vit"))
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert spec["replaced"]["encoder.layers.encoder_layer_0.self_attention"] == "attention-heads"
    back = load(tmp_path / "m", trust_code=True)
    with torch.no_grad():
        assert torch.equal(back(x), pruned(x))
    # a loaded model saves and loads again the same way
    save_model(back, tmp_path / "m2", _source("tiny_vit"))
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "m2", trust_code=True)(x), pruned(x))


def test_remove_heads_refuses_to_remove_every_head():
    model, _ = tiny_attention()
    with pytest.raises(HwpruneError, match="keep at least one"):
        remove_heads(model, {"attn.0": [0, 1, 2, 3]})
    with pytest.raises(HwpruneError, match="not an attention"):
        remove_heads(model, {"fc": [0]})


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_score_heads_takes_exactly_the_criteria_listed_for_heads(criterion):
    """`hwprune methods` lists each criterion's granularities (`list_criteria`): score_heads takes every
    criterion listed for heads and refuses every other one."""
    listed = {name for name, _, granularities in list_criteria() if HEAD in granularities}
    assert listed and set(CRITERIA) - listed  # both sides are exercised
    model, x = tiny_vit()
    if criterion in listed:
        scores = score_heads(model, x, criterion)
        assert sorted(scores) == [a.name for a in find_heads(model)]
        assert all(s.shape == (4,) and torch.isfinite(s).all() for s in scores.values())
    else:
        with pytest.raises(HwpruneError, match="does not score heads"):
            score_heads(model, x, criterion)


# ----------------------------------------------------------------------------------------------- blocks


def test_find_blocks_skips_downsampling_blocks_and_non_residual_modules():
    model, x = tiny_blocks()
    assert [(b.name, b.kind, b.shape) for b in find_blocks(model, x)] == [
        ("blocks.0", "BasicBlock", [2, 8, 8, 8]),
        ("blocks.1", "BasicBlock", [2, 8, 8, 8]),
        ("blocks.3", "BasicBlock", [2, 16, 4, 4]),
    ]
    vit, xv = tiny_vit()  # the encoder adds a position embedding to its input: not a residual block
    assert [b.name for b in find_blocks(vit, xv)] == [
        "encoder.layers.encoder_layer_0",
        "encoder.layers.encoder_layer_1",
    ]


def test_block_l1_removes_exactly_the_lowest_scoring_blocks():
    model, x = tiny_blocks()
    with torch.no_grad():
        for i, f in ((0, 3.0), (1, 0.2), (3, 1.0)):
            for conv in (model.blocks[i].conv1, model.blocks[i].conv2):
                conv.weight *= f
    blocks, scores = score_blocks(model, x, "l1")
    for b, s in zip(blocks, scores, strict=True):
        ws = [m.weight for m in model.get_submodule(b.name).modules() if isinstance(m, nn.Conv2d)]
        want = sum(w.abs().sum() for w in ws) / sum(w.numel() for w in ws)
        assert s == pytest.approx(want.item(), rel=1e-6)
    order = sorted(range(3), key=lambda i: scores[i])
    pruned, info = prune_blocks(model, x, "l1", ratio=0.67)  # floor(0.67 * 3) = 2
    assert info.removed == sorted(blocks[i].name for i in order[:2])
    assert info.removed == ["blocks.1", "blocks.3"]
    assert isinstance(pruned.blocks[1], nn.Identity) and isinstance(pruned.blocks[3], nn.Identity)
    assert isinstance(pruned.blocks[2], BasicBlock)  # the downsampling block stays
    assert info.params_before - info.params_after == sum(b.params for b in blocks if b.name in info.removed)


@pytest.mark.parametrize("criterion", sorted(block_criteria()))
def test_every_block_criterion_never_removes_the_downsampling_block(criterion):
    model, x = tiny_blocks()
    pruned, info = prune_blocks(model, x, criterion, ratio=0.99)  # floor(0.99 * 3) = 2 of 3
    assert len(info.removed) == 2 and "blocks.2" not in info.removed
    assert isinstance(pruned.blocks[2], BasicBlock)
    with torch.no_grad():
        assert pruned(x).shape == (2, 4)


def test_loss_change_of_a_block_whose_branch_is_zero_is_zero():
    model, x = tiny_blocks()
    with torch.no_grad():
        model.blocks[1].bn2.weight.zero_()
        model.blocks[1].bn2.bias.zero_()  # f(x) = 0 and the input is post-ReLU: relu(x + 0) = x
    blocks, scores = score_blocks(model, x, "loss-change")
    assert [b.name for b in blocks][1] == "blocks.1" and scores[1] == 0.0
    assert scores[0] > 0 and scores[2] > 0  # the other two change the self-labelled loss
    pruned, info = prune_blocks(model, x, "loss-change", ratio=0.34)  # one block
    assert info.removed == ["blocks.1"]
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


def test_block_pruning_save_load_parity(tmp_path):
    model, x = tiny_blocks()
    pruned, info = prune_blocks(model, x, "l2", ratio=0.5)
    assert len(info.removed) == 1
    save_model(pruned, tmp_path / "m", _source("tiny_blocks"))
    assert json.loads((tmp_path / "m" / "spec.json").read_text())["replaced"] == {info.removed[0]: "identity"}
    back = load(tmp_path / "m", trust_code=True)
    assert isinstance(back.get_submodule(info.removed[0]), nn.Identity)
    with torch.no_grad():
        assert torch.equal(back(x), pruned(x))


def test_vit_blocks_and_heads_together_save_and_load(tmp_path):
    model, x = tiny_vit()
    pruned, _ = prune_heads(model, x, "l1", ratio=0.5)
    pruned, info = prune_blocks(pruned, x, "loss-change", ratio=0.5)
    assert len(info.removed) == 1
    save_model(pruned, tmp_path / "m", _source("tiny_vit"))
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "m", trust_code=True)(x), pruned(x))


# ----------------------------------------------------------------------------------------------- errors


def test_user_errors():
    model, x = tiny_attention()
    with pytest.raises(HwpruneError, match="unknown criterion 'nope'"):
        prune_heads(model, x, "nope")
    with pytest.raises(HwpruneError, match="unknown block criterion 'nope'"):
        prune_blocks(*tiny_blocks(), "nope")
    with pytest.raises(HwpruneError, match="unknown head scope"):
        prune_heads(model, x, "l1", 0.5, scope="model")
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(HwpruneError, match=r"outside \[0, 1\)"):
            prune_heads(model, x, "l1", bad)
        with pytest.raises(HwpruneError, match=r"outside \[0, 1\)"):
            prune_blocks(*tiny_blocks(), "l1", bad)
    with pytest.raises(HwpruneError, match="no nn.MultiheadAttention"):
        prune_heads(*tiny_blocks(), "l1", 0.5)


@pytest.mark.gpu
def test_heads_and_blocks_on_cuda(tmp_path):
    model, x = tiny_attention()
    model, x = model.cuda(), x.cuda()
    pruned, info = prune_heads(model, x, "taylor", ratio=0.5)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for layer in info.layers:
            cols = [h * 4 + j for h in layer.removed for j in range(4)]
            zeroed.get_submodule(layer.name).out_proj.weight[:, cols] = 0
        assert next(pruned.parameters()).is_cuda
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-4, atol=1e-5)
    blocks, xb = tiny_blocks()
    pruned, info = prune_blocks(blocks.cuda(), xb.cuda(), "loss-change", ratio=0.5)
    assert len(info.removed) == 1 and "blocks.2" not in info.removed
