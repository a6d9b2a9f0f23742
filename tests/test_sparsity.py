"""Weight-level sparsity: pattern masks, keeping masks through fine-tuning, schedules, compressed save/load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

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
from hwprune.apply.semistructured import to_semi_structured
from hwprune.core.data import Dataset
from hwprune.core.errors import HwpruneError
from hwprune.export.model import save_model
from hwprune.zoo.specs import load_saved as load
from hwprune.export.sparse import decode, directory_bytes, encode, encoded_sizes
from hwprune.finetune.train import train_steps
from hwprune.finetune.weights import WeightPruneConfig, gradual_sparsity, iterative_targets, prune_weights

MLP_SOURCE = """
import torch.nn as nn


def mlp256():
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 10)
    )
"""


def magnitude(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().abs() for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def linear_with(weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


@pytest.fixture
def mlp_file(tmp_path):
    path = tmp_path / "mlp_models.py"
    path.write_text(MLP_SOURCE)
    return str(path)


# ------------------------------------------------------------------------------------------ patterns


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


# ------------------------------------------------------------------------------------------ N:M


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


# ------------------------------------------------------------------------------------------ blocks


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


# ------------------------------------------------------------------------------------------ unstructured


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


# ------------------------------------------------------------------------------------------ masks in training


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


# ------------------------------------------------------------------------------------------ schedules


def test_gradual_ramp_by_hand():
    # s_t = 0.9 + (0 - 0.9) * (1 - t / 100)^3
    assert gradual_sparsity(0, 0, 100, 0.9) == 0.0
    assert gradual_sparsity(50, 0, 100, 0.9) == pytest.approx(0.9 - 0.9 * 0.125)  # 0.7875
    assert gradual_sparsity(100, 0, 100, 0.9) == pytest.approx(0.9)
    assert gradual_sparsity(500, 0, 100, 0.9) == pytest.approx(0.9)
    assert gradual_sparsity(5, 10, 20, 0.9) == 0.0  # before the start: dense
    assert gradual_sparsity(15, 10, 20, 0.8, initial=0.4) == pytest.approx(0.8 - 0.4 * 0.125)  # 0.75
    assert gradual_sparsity(15, 10, 20, 0.8, power=1) == pytest.approx(0.4)
    with pytest.raises(HwpruneError):
        gradual_sparsity(0, 10, 10, 0.5)


def test_iterative_targets():
    assert iterative_targets(0.9, 1) == [pytest.approx(0.9)]
    t = iterative_targets(0.75, 2)
    assert t == [pytest.approx(0.5), pytest.approx(0.75)]  # each round removes half of what is left


def _toy_data(n=512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=g)
    y = (x[:, :4].argmax(1)).long()
    return Dataset("toy", x, y, x[:64], y[:64], 4, "toy")


def _toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


@pytest.mark.parametrize("schedule", ["one-shot", "iterative", "gradual"])
def test_schedules_reach_final_sparsity(schedule):
    model = _toy_model()
    res = prune_weights(model, _toy_data(), schedule=schedule, sparsity=0.9, epochs=2, batch_size=64, rounds=3, every=2)
    stats = sparsity_of(model)
    assert stats.layers["0"] == pytest.approx(0.9, abs=1e-3) and stats.layers["2"] == pytest.approx(0.9, abs=1e-3)
    assert stats.layers["4"] == 0.0  # head dense
    targets = [h["target"] for h in res.history]
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.9)
    if schedule == "iterative":
        assert targets == pytest.approx([1 - 0.1 ** (1 / 3), 1 - 0.1 ** (2 / 3), 0.9])
        assert [h["step"] for h in res.history] == [0, 6, 12]  # 16 steps in 3 chunks of 6, 6, 4
    if schedule == "gradual":
        assert len(res.history) > 3 and res.history[-1]["step"] == 12  # ramp over 75% of 16 steps
    # Nested masks: every weight pruned stays pruned, so the final count is exact after the last round.
    assert all(abs(h["actual"] - h["target"]) < 1e-3 for h in res.history)


def test_prune_weights_nm_with_criterion_and_teacher():
    model = _toy_model()
    teacher = copy.deepcopy(model)
    prune_weights(model, _toy_data(), pattern="2:4", criterion="taylor", epochs=1, batch_size=64, teacher=teacher)
    assert check_nm(model[0].weight, 2, 4) and check_nm(model[2].weight, 2, 4)
    assert model[0].hwprune_sparsity == "2:4"
    with pytest.raises(HwpruneError, match="fixed sparsity"):
        WeightPruneConfig(pattern="2:4", schedule="gradual")
    with pytest.raises(HwpruneError, match="schedule 'cubic'"):
        WeightPruneConfig(sparsity=0.5, schedule="cubic")


# ------------------------------------------------------------------------------------------ storage


@pytest.mark.parametrize("density", [0.0, 0.03, 0.1, 0.5, 0.98, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_encode_round_trip_bit_identical(density, dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 40, generator=g).to(dtype)
    w[0, :3] = -0.0  # kept negative zeros survive as -0.0
    mask = torch.rand(48, 40, generator=g) < density
    mask[0, :3] = True
    fmt, parts = encode(w, mask)
    sizes = encoded_sizes((48, 40), int(mask.sum()), w.element_size())
    assert fmt == min(("dense", "bitmask", "csr"), key=lambda f: sizes[f])
    got = decode(fmt, parts, [48, 40], dtype)
    want = w.masked_fill(~mask, 0)
    bits = torch.int16 if w.element_size() == 2 else torch.int32
    assert torch.equal(got.view(bits), want.view(bits))


def test_encoding_choice_by_size():
    assert min(encoded_sizes((256, 256), 6554, 4).items(), key=lambda kv: kv[1])[0] == "bitmask"  # 90%
    assert min(encoded_sizes((256, 256), 655, 4).items(), key=lambda kv: kv[1])[0] == "csr"  # 99%
    assert min(encoded_sizes((256, 256), 65000, 4).items(), key=lambda kv: kv[1])[0] == "dense"  # 0.8%
    # bitmask at 90%: 65536 / 8 + 6554 * 4 bytes
    assert encoded_sizes((256, 256), 6554, 4)["bitmask"] == 8192 + 26216


def test_save_load_masked_model_compressed_and_bit_identical(tmp_path, mlp_file):
    from hwprune.zoo.specs import build_source

    source = {"kind": "file", "path": mlp_file, "function": "mlp256"}
    torch.manual_seed(0)
    dense = build_source(source)
    save_model(dense, tmp_path / "dense", source)
    assert sorted(p.name for p in (tmp_path / "dense").iterdir()) == ["model.safetensors", "spec.json"]

    model = copy.deepcopy(dense)
    masks = compute_masks(model, magnitude(model), "unstructured", 0.9, layers=["0", "2"])
    apply_masks(model, masks)
    train_steps(model, [(torch.randn(8, 256), torch.randint(0, 10, (8,))) for _ in range(3)], 1e-3, progress=False)
    save_model(model, tmp_path / "sparse", source)
    ratio = directory_bytes(tmp_path / "sparse") / directory_bytes(tmp_path / "dense")
    assert ratio <= 0.25  # 0.1 * 32 + 1 = 4.2 bits per weight against 32: ~0.14 with biases and headers

    back = load(tmp_path / "sparse")
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k].view(torch.int32), v.view(torch.int32)), k
    assert back[0].hwprune_sparsity == "unstructured:0.9"
    assert all(torch.equal(get_masks(back)[n], masks[n]) for n in masks)
    # The loaded model keeps its masks while it trains.
    train_steps(back, [(torch.randn(8, 256), torch.randint(0, 10, (8,)))] * 2, 1e-2, progress=False)
    assert bool((back[0].weight[~masks["0"]] == 0).all())
    assert load(tmp_path / "dense")[0].weight.equal(dense[0].weight)  # a dense save loads as before


def test_save_load_nm_and_block_conv(tmp_path, mlp_file):
    from hwprune.zoo.specs import build_source

    source = {"kind": "file", "path": mlp_file, "function": "cnn"}
    torch.manual_seed(0)
    model = build_source(source)
    masks = compute_masks(model, magnitude(model), "block4x1", 0.5, layers=["0", "2"])
    apply_masks(model, masks, "block4x1")
    save_model(model, tmp_path / "m", source)
    back = load(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert back[2].hwprune_sparsity == "block4x1:0.5"


def test_damaged_sparse_file(tmp_path, mlp_file):
    from hwprune.zoo.specs import build_source

    source = {"kind": "file", "path": mlp_file, "function": "mlp256"}
    model = build_source(source)
    apply_masks(model, compute_masks(model, magnitude(model), "2:4", layers=["0"]), "2:4")
    save_model(model, tmp_path / "m", source)
    (tmp_path / "m" / "sparse.safetensors").write_bytes(b"junk")
    with pytest.raises(HwpruneError, match="cannot read compressed weights"):
        load(tmp_path / "m")


# ------------------------------------------------------------------------------------------ CUDA 2:4


def test_semi_structured_errors_without_cuda_or_masks():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    with pytest.raises(HwpruneError, match="no 2:4-masked Linear"):
        to_semi_structured(model)
    apply_masks(model, compute_masks(model, magnitude(model), "2:4"), "2:4")
    if not torch.cuda.is_available():
        with pytest.raises(HwpruneError, match="need an NVIDIA GPU"):
            to_semi_structured(model)
    else:
        with pytest.raises(HwpruneError, match="move the model to the GPU"):
            to_semi_structured(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_semi_structured_matches_masked_dense_on_gpu():
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("needs compute capability 8.0+")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 128), nn.Linear(128, 10))
    apply_masks(model, compute_masks(model, magnitude(model), "2:4"), "2:4")
    model = model.half().cuda().eval()
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        ref = model(x)
        assert to_semi_structured(model) == ["0", "2"]
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    bad = nn.Sequential(nn.Linear(64, 24), nn.Linear(24, 2))  # 24 rows: not a multiple of the kernels' tile
    apply_masks(bad, compute_masks(bad, magnitude(bad), "2:4"), "2:4")
    with pytest.raises(HwpruneError, match="'0' 24x64"):
        to_semi_structured(bad.half().cuda())
