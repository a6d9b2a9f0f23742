"""The README's Python example runs as written, and the API takes keyword (dict) example inputs."""

import os
import re
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import hwprune

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Use it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "hwprune.prune(" in code and "hwprune.load(" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    speedup = float(re.search(r"speedup ([0-9.]+)x", out).group(1))
    assert speedup > 1.0  # measured on the suite's 3-call timing: faster, though not a figure to quote
    assert (tmp_path / "runs/mine/report.json").exists() and (tmp_path / "runs/mine/model/spec.json").exists()


class KeywordNet(nn.Module):
    """Called with keywords, as transformers are: forward(features=..., scale=...)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, 4)

    def forward(self, features, scale):
        return self.fc2(torch.relu(self.fc1(features))) * scale


def test_prune_takes_dict_example_inputs_and_dict_batches(tmp_path):
    assert os.environ["HWPRUNE_TIMING"] == "fast"
    x = torch.randn(256, 16)
    inputs = {"features": x[:32], "scale": torch.ones(1)}
    batches = [
        ({"features": x[i : i + 32], "scale": torch.ones(1)}, torch.randint(0, 4, (32,))) for i in range(0, 256, 32)
    ]
    model = KeywordNet()
    result = hwprune.prune(
        model, inputs, method={"sparsity": 0.5}, data=batches, finetune=1, target="analytic-test", progress=False
    )
    assert result.model.fc1.out_features == 32  # half of the hidden neurons removed, fc2 narrowed with them
    assert result.model(**inputs).shape == (32, 4)
    assert result.report.pruned.accuracy is not None
    result.save(tmp_path / "kw")
    back = hwprune.load(tmp_path / "kw" / "model", model=KeywordNet())
    torch.testing.assert_close(back(**inputs), result.model(**inputs))


def test_load_of_an_object_model_says_what_to_pass(tmp_path):
    hwprune.save(KeywordNet(), tmp_path / "m")
    try:
        hwprune.load(tmp_path / "m")
    except hwprune.HwpruneError as e:
        assert "model=" in str(e) and "KeywordNet" in str(e)
    else:
        raise AssertionError("load without the architecture must say what to pass")


def test_unlabelled_batches_finetune_by_distillation():
    x = torch.randn(128, 16)
    loader = DataLoader(TensorDataset(x), batch_size=32)  # batches of (inputs,) only
    result = hwprune.prune(
        KeywordNet(),
        {"features": x[:32], "scale": torch.ones(1)},
        method={"sparsity": 0.25},
        target="analytic-test",
        data=[{"features": b[0], "scale": torch.ones(1)} for b in loader],
        finetune=1,
        progress=False,
    )
    assert result.report.pruned.accuracy is None and result.model.fc1.out_features == 48
