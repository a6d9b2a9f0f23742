"""`hwprune evaluate DIR --data ...`: the metric of the saved model, or of another, recorded in all three reports."""

import json

import torch
from helpers import assert_one_line_error, run_cli

from hwprune.cli.main import main
from hwprune.evaluate.metrics import evaluate
from hwprune.report.html import external_references
from hwprune.zoo.specs import resolve

DATA = """
import torch
from torch.utils.data import TensorDataset

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 3, 8, 8, generator=g)
    train = TensorDataset(x[:64], torch.randint(0, 5, (64,), generator=g))
    return train, TensorDataset(x[64:], torch.randint(0, 5, (32,), generator=g))
"""


def test_evaluate_records_the_metric_in_every_report(tmp_path, tiny_file, capsys):
    out = tmp_path / "o"
    argv = ["prune", "--model", f"{tiny_file}:tiny_cnn", "--target", "analytic-test", "--batch-size", "64"]
    assert main(argv + ["--budget", "latency=0.7", "--quiet", "--out", str(out)]) == 0
    (tmp_path / "d.py").write_text(DATA)
    spec = f"{tmp_path / 'd.py'}:data"
    code, stdout, _ = run_cli(capsys, "evaluate", out, "--data", spec, "--trust-code")
    assert code == 0 and "recorded in" in stdout
    r = json.loads((out / "report.json").read_text())
    (e,) = r["evaluations"]
    import importlib.util  # noqa: PLC0415

    mod = importlib.util.spec_from_file_location("d", tmp_path / "d.py")
    d = importlib.util.module_from_spec(mod)
    mod.loader.exec_module(d)
    val = d.data()[1]
    expected = evaluate(resolve(str(out / "model"), trust_code=True).model, [(val.tensors[0], val.tensors[1])])
    assert e["metric"] == expected and e["data"] == spec and e["model"] == "the saved pruned model"
    assert e["samples"] == 32
    assert f"{100 * expected:.2f}%" in (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert f"{100 * expected:.2f}%" in html and external_references(html) == []
    # once more: replaced, not appended
    assert run_cli(capsys, "evaluate", out, "--data", spec, "--trust-code")[0] == 0
    assert len(json.loads((out / "report.json").read_text())["evaluations"]) == 1
    assert torch.isfinite(torch.tensor(expected))


def test_evaluate_refuses_a_directory_without_a_report(tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", tmp_path, "--data", "mnist1d")
    assert_one_line_error(code, err, "no report.json")
