"""Models from anywhere: timm networks, torchvision segmentation without downloads, outputs that are not a
bare tensor (transformers ModelOutput, segmentation dicts, tuples)."""

import pytest
import torch
import torch.nn as nn
from helpers import run_cli

import hwprune
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import primary_output
from hwprune.zoo.specs import resolve


def test_segmentation_models_build_without_downloading_a_backbone():
    # weights_backbone defaults to ImageNet weights; with no network the build would fail.
    r = resolve("torchvision:lraspp_mobilenet_v3_large", 1, "3x64x64", False)
    assert isinstance(r.model(r.example_inputs), dict)  # {"out": ...}


def test_timm_model_prunes_to_half_the_macs_saves_and_reloads(tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run_cli(
        capsys,
        "prune",
        "--model",
        "timm:resnet10t",
        "--input-shape",
        "3x32x32",
        "--budget",
        "macs=0.5",
        "--target",
        "analytic-test",
        "--quiet",
        "--out",
        out,
    )
    assert code == 0, err
    model = hwprune.load(out / "model")  # a timm source is rebuilt by timm: no user code, no trust_code
    dense = resolve("timm:resnet10t", 1, "3x32x32", False).model
    x = torch.randn(1, 3, 32, 32)
    assert model(x).shape == dense(x).shape == (1, 1000)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())


def test_unknown_timm_model_is_one_line():
    with pytest.raises(HwpruneError, match="unknown timm model 'resnet_nope'"):
        resolve("timm:resnet_nope", 1, None, False)


class Output(dict):
    """Like transformers' ModelOutput: a mapping whose values are also attributes."""

    __getattr__ = dict.__getitem__


class DictNet(nn.Module):
    def __init__(self, wrap):
        super().__init__()
        self.fc1, self.fc2, self.wrap = nn.Linear(12, 32), nn.Linear(32, 3), wrap

    def forward(self, x):
        return self.wrap(self.fc2(torch.relu(self.fc1(x))))


@pytest.mark.parametrize(
    "wrap",
    [lambda y: Output(logits=y, hidden=y * 0), lambda y: {"out": y}, lambda y: (y, y.detach())],
    ids=["ModelOutput", "dict", "tuple"],
)
def test_models_that_return_more_than_a_tensor_prune_and_fine_tune(wrap):
    torch.manual_seed(0)
    x, y = torch.randn(96, 12), torch.randint(0, 3, (96,))
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
    result = hwprune.prune(
        DictNet(wrap),
        x[:8],
        method={"sparsity": 0.5, "criterion": "taylor"},
        data=batches,
        finetune=1,
        target="analytic-test",
        progress=False,
    )
    assert result.model.fc1.out_features == 16 and result.report.pruned.accuracy is not None
    assert primary_output(result.model(x[:4])).shape == (4, 3)


def test_a_dense_model_near_chance_on_the_data_is_warned_about(capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 10))  # untrained: ~10% on 10 classes
    x, y = torch.randn(128, 12), torch.randint(0, 10, (128,))
    result = hwprune.prune(
        model,
        x[:8],
        method={"sparsity": 0.25},
        data=[(x[:64], y[:64]), (x[64:], y[64:])],
        target="analytic-test",
        progress=False,
    )
    err = capsys.readouterr().err
    assert "near chance for 10 classes" in err and any("near chance" in n for n in result.report.notes)
