"""Weight-level sparsity: pattern masks, keeping masks through fine-tuning, schedules, compressed save/load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from helpers import magnitude

from hwprune.apply.masks import (
    apply_masks,
    check_blocks,
    check_nm,
    compute_masks,
    get_masks,
    parse_pattern,
    prunable_layers,
    remove_masks,
    sparsity_of,
)
from hwprune.core.errors import HwpruneError
from hwprune.finetune.train import train_steps


def linear_with(weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


def test_parse_pattern():
    assert parse_pattern("unstructured").kind == "unstructured"
    p = parse_pattern("2:4")
    assert (p.kind, p.n, p.m, p.implied_sparsity) == ("nm", 2, 4, 0.5)
    assert parse_pattern(" 4:8 ").label(0.5) == "4:8"
    b = parse_pattern("block8x8")
    assert (b.kind, b.rows, b.cols) == ("block", 8, 8)
    assert parse_pattern("Block4x1").label(0.75) == "block4x1:0.75"
    assert parse_pattern("unstructured").label(0.9) == "unstructured:0.9"
    for bad in ("4:2", "0:4", "2-4", "block0x4", "blocks", ""):
        with pytest.raises(HwpruneError, match="accepted: unstructured, N:M"):
            parse_pattern(bad)


def test_nm_sparsity_is_implied():
    lin = nn.Linear(8, 2)
    with pytest.raises(HwpruneError, match="fixes sparsity at 0.5"):
        compute_masks(lin, {"": lin.weight.abs()}, "2:4", 0.9, layers=[""])
    with pytest.raises(HwpruneError, match="needs a sparsity"):
        compute_masks(lin, {"": lin.weight.abs()}, "unstructured", None, layers=[""])


def test_2_4_keeps_top_two_of_each_group_by_hand():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.5, 0.1, 0.9, 0.7], [8.0, 7.0, 6.0, 5.0, 3.0, 1.0, 1.0, 0.0]])
    lin = linear_with(torch.ones(2, 8))
    mask = compute_masks(lin, {"": scores}, "2:4", layers=[""])[""]
    expected = torch.tensor(
        [[False, True, True, False, False, False, True, True], [True, True, False, False, True, True, False, False]]
    )
    assert torch.equal(mask, expected)  # a tie (1.0, 1.0) for the last place keeps the earlier weight


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_masks_on_conv_and_linear(n, m):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 32), nn.Linear(32, 10))
    masks = compute_masks(model, magnitude(model), f"{n}:{m}")
    assert set(masks) == {"0", "3"}  # the output layer "4" stays dense
    for name, mask in masks.items():
        w = model.get_submodule(name).weight
        groups = mask.reshape(w.shape[0], -1, m)
        assert bool((groups.sum(-1) == n).all())  # exactly n kept per group of m along the input
        # Kept = the n largest |w| of each group: the smallest kept is >= the largest removed.
        a = w.detach().abs().reshape(w.shape[0], -1, m)
        kept_min = torch.where(groups, a, torch.full_like(a, float("inf"))).amin(-1)
        removed_max = torch.where(groups, torch.full_like(a, -1.0), a).amax(-1)
        assert bool((kept_min >= removed_max).all())
        apply_masks(model, {name: mask}, f"{n}:{m}")
        assert check_nm(w, n, m) and check_nm(mask, n, m)
        assert model.get_submodule(name).hwprune_sparsity == f"{n}:{m}"
        assert sparsity_of(model).layers[name] == pytest.approx(1 - n / m)
    assert not check_nm(torch.ones(2, 8), 2, 4)


def test_nm_groups_follow_flattened_conv_rows():
    conv = nn.Conv2d(2, 1, (1, 2), bias=False)  # in_flat = 2 * 1 * 2 = 4: one group per output row
    scores = torch.tensor([[[[1.0, 5.0]], [[3.0, 2.0]]]])
    mask = compute_masks(conv, {"": scores}, "2:4", layers=[""])[""]
    assert mask.flatten().tolist() == [False, True, True, False]


def test_nm_layer_that_does_not_divide():
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 2))
    assert set(compute_masks(model, magnitude(model), "2:4")) == {"1"}  # "0" (6 inputs) left dense by default
    with pytest.raises(HwpruneError, match="6 inputs per row, not a multiple of 4"):
        compute_masks(model, magnitude(model), "2:4", layers=["0"])


def test_block4x1_by_hand():
    # 8x2 weight, four 4x1 blocks; block sums: rows 0-3 col 0: 4, col 1: 1; rows 4-7 col 0: 100, col 1: 1000
    scores = torch.tensor([[1.0, 0.25]] * 4 + [[25.0, 250.0]] * 4)
    lin = linear_with(torch.ones(8, 2))
    mask = compute_masks(lin, {"": scores}, "block4x1", 0.5, layers=[""])[""]
    expected = torch.tensor([[False, False]] * 4 + [[True, True]] * 4)
    assert torch.equal(mask, expected)
    assert check_blocks(mask, 4, 1)


def test_block8x8_edges():
    # 20x12: blocks of rows 0-7, 8-15, 16-19 (4 rows) x cols 0-7, 8-11 (4 cols); 6 blocks, 240 weights.
    torch.manual_seed(0)
    scores = torch.ones(20, 12)
    scores[16:, 8:] = 0.9  # the 4x4 corner block: lowest mean, even after scaling to a full block
    scores[:8, :8] = 0.95  # a full block, mean 0.95
    lin = linear_with(torch.randn(20, 12))
    # 240 * 0.3 = 72 weights may go: the corner (16) and the next lowest, the 64-weight block (16+64 = 80 > 72),
    # so only the corner goes. A cut-short block is scored at its mean, not its (smaller) sum.
    mask = compute_masks(lin, {"": scores}, "block8x8", 0.3, layers=[""])[""]
    assert int((~mask).sum()) == 16 and not mask[16:, 8:].any()
    mask = compute_masks(lin, {"": scores}, "block8x8", 0.34, layers=[""])[""]  # 81.6 -> 82 >= 80
    assert int((~mask).sum()) == 80 and not mask[:8, :8].any() and not mask[16:, 8:].any()
    apply_masks(lin, {"": mask}, "block8x8")
    assert check_blocks(lin.weight, 8, 8) and check_blocks(mask, 8, 8)
    assert lin.hwprune_sparsity == "block8x8:0.3333"
    broken = mask.clone()
    broken[0, 0] = True
    assert not check_blocks(broken, 8, 8)


def test_block_on_conv_global():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 16, 3), nn.Conv2d(16, 4, 1))
    masks = compute_masks(model, magnitude(model), "block4x1", 0.5, scope="global")
    total = sum(m.numel() for m in masks.values())
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == total // 2  # all blocks are full (16 and 8 rows): exactly half the weights
    for n, m in masks.items():
        assert check_blocks(m, 4, 1), n


def test_unstructured_layer_removes_exactly_k_smallest():
    w = torch.tensor([[0.5, -0.1, 0.3, 2.0], [-3.0, 0.05, 1.0, -0.2]])
    lin = linear_with(w)
    mask = compute_masks(lin, magnitude(lin), "unstructured", 0.5, layers=[""])[""]
    assert torch.equal(mask, torch.tensor([[True, False, False, True], [True, False, True, False]]))
    apply_masks(lin, {"": mask})
    assert lin.weight.tolist() == [[0.5, 0.0, 0.0, 2.0], [-3.0, 0.0, 1.0, 0.0]]
    assert lin.hwprune_sparsity == "unstructured:0.5"


def test_unstructured_global_vs_layer():
    a = nn.Linear(4, 1, bias=False)
    b = nn.Linear(1, 4, bias=False)
    model = nn.Sequential(a, b, nn.Linear(4, 2))
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        b.weight.copy_(torch.tensor([[10.0], [20.0], [30.0], [0.5]]))
    glob = compute_masks(model, magnitude(model), "unstructured", 0.5, scope="global")
    assert glob["0"].flatten().tolist() == [False, False, False, True]  # 0.5, 1, 2, 3 are the 4 smallest
    assert glob["1"].flatten().tolist() == [True, True, True, False]
    layer = compute_masks(model, magnitude(model), "unstructured", 0.5)
    assert layer["0"].flatten().tolist() == [False, False, True, True]
    assert layer["1"].flatten().tolist() == [False, True, True, False]
    with pytest.raises(HwpruneError, match="scope 'all'"):
        compute_masks(model, magnitude(model), "unstructured", 0.5, scope="all")


def test_default_layers_skip_the_layer_that_runs_last():
    class Swapped(nn.Module):  # "head" is registered first but runs last
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 2)
            self.body = nn.Linear(4, 8)

        def forward(self, x):
            return self.head(self.body(x))

    m = Swapped()
    assert prunable_layers(m, torch.randn(1, 4)) == ["body"]
    assert prunable_layers(m, torch.randn(1, 4), exclude=["body"]) == []


def _batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 32, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)]


def test_masks_survive_adam_finetuning_and_remove():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    masks = compute_masks(model, magnitude(model), "unstructured", 0.8)
    apply_masks(model, masks)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in masks}
    train_steps(model, _batches(), lr=1e-2, progress=False)  # AdamW + one-cycle; no forward after the last step
    for n, mask in masks.items():
        w = model.get_submodule(n).weight
        assert bool((w[~mask] == 0).all()), n  # Adam never moved a weight with zero gradient and zero moments
        assert not torch.equal(w[mask], before[n][mask])  # the kept weights did train
    # A copy keeps its masks too (deepcopy drops tensor hooks; the pre-hook re-arms them).
    clone = copy.deepcopy(model)
    train_steps(clone, _batches(seed=1), lr=1e-2, progress=False)
    for n, mask in masks.items():
        assert bool((clone.get_submodule(n).weight[~mask] == 0).all())
    assert sorted(remove_masks(model)) == ["0", "2"]
    assert get_masks(model) == {} and not hasattr(model[0], "hwprune_sparsity")
    train_steps(model, _batches(), lr=1e-2, progress=False)
    assert sparsity_of(model).layers["0"] < 0.01  # unmasked: the zeros train again


def test_forward_rezeroes_after_an_external_change():
    lin = linear_with(torch.ones(2, 4))
    apply_masks(lin, {"": torch.tensor([[True, False, True, False]] * 2)})
    with torch.no_grad():
        lin.weight.add_(1.0)  # e.g. an optimiser step that ignores gradients
    with torch.inference_mode():
        out = lin(torch.ones(1, 4))
    assert out.tolist() == [[4.0, 4.0]] and lin.weight[0].tolist() == [2.0, 0.0, 2.0, 0.0]
