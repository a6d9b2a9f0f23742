"""Bad model specs and damaged saved files: one line that says what is wrong (CLI exit 2), no traceback."""

import json

import pytest
import torch
import torch.nn as nn
from helpers import assert_one_line_error, run_cli, uniformly_pruned
from tiny_models import tiny_cnn, tiny_resnet

import hwprune
from hwprune.apply.masks import apply_masks, compute_masks
from hwprune.core.errors import HwpruneError
from hwprune.export.model import save_model
from hwprune.plan.plan import Plan
from hwprune.zoo.specs import resolve

BAD_FILE = """
import torch
import torch.nn as nn

WIDTH = 3


def boom():
    raise RuntimeError("weights server unreachable\\nsecond line")


def wrong_type():
    return {"model": nn.Linear(2, 2)}


class BatchOne(nn.Module):
    def forward(self, x):
        assert x.shape[0] == 1, "only batch 1 is supported"
        return x


def batch_one():
    return BatchOne()
"""


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad_models.py"
    path.write_text(BAD_FILE)
    return path


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("torchvision:", "torchvision: needs a model name, e.g. torchvision:resnet18"),
        ("torchvision:nope", "unknown torchvision model 'nope'"),
        ("{dir}/bad_models.py", "names no function: use {dir}/bad_models.py:FUNCTION"),
        (":tiny_cnn", "needs both a file and a function: path/to/file.py:function"),
        ("{dir}/missing.py:net", "model file {dir}/missing.py not found"),
        ("{dir}/bad_models.py:WIDTH", "bad_models.py:WIDTH is not callable (int); name a function that returns"),
        ("{dir}/bad_models.py:nothing", "bad_models.py has no function 'nothing'"),
        ("{dir}/bad_models.py:boom", "bad_models.py:boom() raised RuntimeError: weights server unreachable"),
        ("{dir}/bad_models.py:wrong_type", "must return an nn.Module or (nn.Module, example_inputs), it returned dict"),
    ],
)
def test_bad_model_specs(capsys, tmp_path, bad_file, spec, needle):
    spec, needle = spec.format(dir=tmp_path), needle.format(dir=tmp_path)
    code, _, err = run_cli(capsys, "bench", "--model", spec, "--input-shape", "2")
    assert_one_line_error(code, err, needle)


def test_file_with_a_syntax_error(capsys, tmp_path):
    (tmp_path / "broken.py").write_text("def net(:\n    pass\n")
    code, _, err = run_cli(capsys, "prune", "--model", f"{tmp_path}/broken.py:net", "--out", tmp_path / "o")
    assert_one_line_error(code, err, f"cannot import {tmp_path}/broken.py: SyntaxError:")
    assert not (tmp_path / "o").exists()


def test_forward_failing_above_batch_one_is_caught_at_resolve(capsys, tmp_path, bad_file):
    spec = f"{bad_file}:batch_one"
    assert resolve(spec, batch_size=1, input_shape="3").example_inputs.shape == (1, 3)
    code, _, err = run_cli(capsys, "bench", "--model", spec, "--input-shape", "3", "--batch-size", "4")
    assert_one_line_error(code, err, "input of shape (4, 3) (batch size 4) does not fit")
    assert err.rstrip().endswith("only batch 1 is supported")


@pytest.fixture
def saved(tmp_path):
    """A small saved model whose source needs no code from the user (the built-in example's architecture)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    apply_masks(model, compute_masks(model, {"0": model[0].weight.abs()}, "2:4", layers=["0"]), "2:4")
    save_model(model, tmp_path / "m", {"kind": "example", "name": "mnist1d"})
    return tmp_path / "m"


def _edit_spec(directory, edit):
    spec = json.loads((directory / "spec.json").read_text())
    edit(spec)
    (directory / "spec.json").write_text(json.dumps(spec))


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: (d / "spec.json").write_text('{"format": "hwprune-model/1", "sour'), "spec.json is not JSON"),
        (lambda d: (d / "spec.json").write_text("[1, 2]"), "spec.json is damaged: it holds a list, not an object"),
        (lambda d: _edit_spec(d, lambda s: s.update(modules=[["0", 16]])), "'modules' must be an object"),
        (
            lambda d: _edit_spec(d, lambda s: s["modules"]["2"].update(out_features="wide")),
            "module '2' has out_features = \"wide\", not an integer",
        ),
        (lambda d: _edit_spec(d, lambda s: s.pop("modules")), "spec.json is damaged: the key 'modules' is missing"),
        (lambda d: _edit_spec(d, lambda s: s.update(source="mnist1d")), "'source' must be an object with a 'kind'"),
        (lambda d: (d / "spec.json").unlink(), "is not a saved hwprune model (no readable spec.json"),
        (
            lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
            "model.safetensors (damaged or cut short?)",
        ),
        (
            lambda d: (d / "sparse.safetensors").write_bytes((d / "sparse.safetensors").read_bytes()[:-9]),
            "cannot read compressed weights",
        ),
        (
            lambda d: _edit_spec(d, lambda s: s["sparse"].update(file="../../etc/weights.safetensors")),
            "'sparse' names the file '../../etc/weights.safetensors', which is not a file in the directory",
        ),
    ],
)
def test_damaged_saved_directory(capsys, saved, damage, needle):
    damage(saved)
    code, _, err = run_cli(capsys, "bench", "--model", saved)
    assert_one_line_error(code, err, needle)
    with pytest.raises(HwpruneError, match="damaged|not a saved|cannot read"):  # the Python path, same check
        hwprune.load(saved, model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))


def test_corrupt_plan_json(tmp_path):
    _, _, plan, _ = uniformly_pruned(tiny_cnn)
    plan.save(tmp_path / "plan.json")
    text = (tmp_path / "plan.json").read_text()
    (tmp_path / "plan.json").write_text(text[: len(text) // 2])
    with pytest.raises(HwpruneError, match=r"cannot read plan .*plan.json: Unterminated|cannot read plan .*Expecting"):
        Plan.load(tmp_path / "plan.json")
    d = plan.to_dict()
    bad = [
        ({**d, "groups": {"conv1": 8}}, "plan 'groups' must be a list of objects"),
        ({**d, "groups": [{**d["groups"][0], "width": "8"}]}, "size and width integers"),
        ({**d, "groups": [{**d["groups"][0], "keep": [0] * d["groups"][0]["width"]}]}, "distinct indices in 0..15"),
        ([d], "not an hwprune plan"),
    ]
    for content, needle in bad:
        (tmp_path / "plan.json").write_text(json.dumps(content))
        with pytest.raises(HwpruneError, match=needle):
            Plan.load(tmp_path / "plan.json")


def test_plan_for_another_model_names_the_first_mismatching_group():
    cnn, x, plan, _ = uniformly_pruned(tiny_cnn)
    resnet, rx = tiny_resnet()
    with pytest.raises(HwpruneError, match="plan group 'conv1' names a layer this model lacks") as e:
        hwprune.apply_plan(resnet, rx, plan, inplace=True)
    assert "\n" not in str(e.value)
    plan.groups[1].size = 32  # conv2 has 24 channels
    with pytest.raises(HwpruneError, match="plan group 'conv2' expects 32 channels, this model's layer has 24"):
        hwprune.apply_plan(cnn, x, plan, inplace=True)
    assert cnn.conv1.out_channels == 16  # checked before any cut: the in-place model is untouched
