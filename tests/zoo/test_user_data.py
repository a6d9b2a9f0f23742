"""Your data, loss and metric from the command line: imagefolder:DIR, file.py:fn, --loss, --metric, no labels."""

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli
from PIL import Image

from hwprune.zoo.userdata import image_folder

MODELS = """
import torch, torch.nn as nn

def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2)
    ), torch.randn(4, 3, 16, 16)

def mlp():
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3)), torch.randn(4, 12)
"""

DATA = """
import pathlib, torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

g = torch.Generator().manual_seed(0)
X, Y = torch.randn(96, 12, generator=g), torch.randint(0, 3, (96,), generator=g)

def pair():
    return TensorDataset(X[:64], Y[:64]), TensorDataset(X[64:], Y[64:])

def unlabelled():
    return DataLoader(X, batch_size=32)

def loss(out, y):
    pathlib.Path(__file__).with_name("loss-was-called").touch()
    return F.cross_entropy(out, y)

def half(out, y):
    return 0.5
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "data.py").write_text(DATA)
    return tmp_path


def _prune(capsys, tmp_path, model, *args):
    out = tmp_path / "out"
    argv = ["prune", "--model", f"{tmp_path}/models.py:{model}", "--target", "analytic-test", "--quiet"]
    code, _, err = run_cli(capsys, *argv, "--selection", "ratio", "--sparsity", "0.5", "--out", out, *args)
    assert code == 0, err
    return json.loads((out / "report.json").read_text())


def test_an_image_folder_is_resized_normalised_split_and_trained_on(files, capsys):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (files / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(files / "imgs" / cls / f"{i}.png")
    r = _prune(capsys, files, "cnn", "--data", f"imagefolder:{files / 'imgs'}", "--finetune-epochs", "1")
    assert r["pruned"]["accuracy"] in (0.0, 1.0)  # measured on the one held-out image (a tenth of 12)
    assert r["groups"][0]["width"] == 8
    train, val = image_folder(files / "imgs", 16)
    assert (len(train), len(val)) == (11, 1) and train[0][0].shape == (3, 16, 16)
    assert abs(float(train[0][0].mean())) < 3  # normalised, not 0..1 pixels


def test_data_from_a_file_with_the_users_loss_and_metric(files, capsys):
    r = _prune(
        capsys,
        files,
        "mlp",
        "--data",
        f"{files}/data.py:pair",
        "--finetune-epochs",
        "1",
        "--criterion",
        "taylor",
        "--loss",
        f"{files}/data.py:loss",
        "--metric",
        f"{files}/data.py:half",
    )
    assert (files / "loss-was-called").exists()  # taylor's gradients and fine-tuning used the user's loss
    assert r["dense"]["accuracy"] == r["pruned"]["accuracy"] == 0.5  # the user's metric, as reported


def test_unlabelled_data_fine_tunes_by_distillation_alone(files, capsys):
    r = _prune(capsys, files, "mlp", "--data", f"{files}/data.py:unlabelled", "--finetune-epochs", "1")
    assert r["pruned"]["accuracy"] is None and r["groups"][0]["width"] == 16


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data", "imagefolder:/no/such/dir"], "not a directory"),
        (["--data", "cifar"], "unknown data set 'cifar' for --data"),
        (["--data", "data.py:nope"], "has no function 'nope' (for --data)"),
        (["--loss", "loss.txt"], "--loss 'loss.txt' must look like path/to/file.py:function"),
    ],
)
def test_bad_data_loss_and_metric_specs_are_one_line(files, capsys, args, needle):
    args = [a.replace("data.py", f"{files}/data.py") for a in args]
    argv = ["prune", "--model", f"{files}/models.py:mlp", "--target", "analytic-test", "--out", files / "o"]
    code, _, err = run_cli(capsys, *argv, *args)
    assert_one_line_error(code, err, needle)
