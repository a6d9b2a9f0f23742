"""Weight-level sparsity: pattern masks, keeping masks through fine-tuning, schedules, compressed save/load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import magnitude

from hwprune.apply.masks import (
    apply_masks,
    compute_masks,
    get_masks,
)
from hwprune.core.errors import HwpruneError
from hwprune.export.model import save_model
from hwprune.export.sparse import decode, directory_bytes, encode, encoded_sizes
from hwprune.finetune.train import train_steps
from hwprune.zoo.specs import build_source
from hwprune.zoo.specs import load_saved as load

MLP_SOURCE = """
import torch.nn as nn


def mlp256():
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 10)
    )
"""


@pytest.fixture
def mlp_file(tmp_path):
    path = tmp_path / "mlp_models.py"
    path.write_text(MLP_SOURCE)
    return str(path)


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
    source = {"kind": "file", "path": mlp_file, "function": "mlp256"}
    torch.manual_seed(0)
    dense = build_source(source, trust_code=True)
    save_model(dense, tmp_path / "dense", source)
    names = sorted(p.name for p in (tmp_path / "dense").iterdir())
    assert names == sorted(["model.safetensors", "spec.json", Path(mlp_file).name])

    model = copy.deepcopy(dense)
    masks = compute_masks(model, magnitude(model), "unstructured", 0.9, layers=["0", "2"])
    apply_masks(model, masks)
    train_steps(model, [(torch.randn(8, 256), torch.randint(0, 10, (8,))) for _ in range(3)], 1e-3, progress=False)
    save_model(model, tmp_path / "sparse", source)
    ratio = directory_bytes(tmp_path / "sparse") / directory_bytes(tmp_path / "dense")
    assert ratio <= 0.25  # 0.1 * 32 + 1 = 4.2 bits per weight against 32: ~0.14 with biases and headers

    back = load(tmp_path / "sparse", trust_code=True)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k].view(torch.int32), v.view(torch.int32)), k
    assert back[0].hwprune_sparsity == "unstructured:0.9"
    assert all(torch.equal(get_masks(back)[n], masks[n]) for n in masks)
    # The loaded model keeps its masks while it trains.
    train_steps(back, [(torch.randn(8, 256), torch.randint(0, 10, (8,)))] * 2, 1e-2, progress=False)
    assert bool((back[0].weight[~masks["0"]] == 0).all())
    assert load(tmp_path / "dense", trust_code=True)[0].weight.equal(dense[0].weight)  # a dense save loads as before


def test_save_load_nm_and_block_conv(tmp_path, mlp_file):
    source = {"kind": "file", "path": mlp_file, "function": "cnn"}
    torch.manual_seed(0)
    model = build_source(source, trust_code=True)
    masks = compute_masks(model, magnitude(model), "block4x1", 0.5, layers=["0", "2"])
    apply_masks(model, masks, "block4x1")
    save_model(model, tmp_path / "m", source)
    back = load(tmp_path / "m", trust_code=True)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert back[2].hwprune_sparsity == "block4x1:0.5"


def test_damaged_sparse_file(tmp_path, mlp_file):
    source = {"kind": "file", "path": mlp_file, "function": "mlp256"}
    model = build_source(source, trust_code=True)
    apply_masks(model, compute_masks(model, magnitude(model), "2:4", layers=["0"]), "2:4")
    save_model(model, tmp_path / "m", source)
    (tmp_path / "m" / "sparse.safetensors").write_bytes(b"junk")
    with pytest.raises(HwpruneError, match="cannot read compressed weights"):
        load(tmp_path / "m", trust_code=True)
