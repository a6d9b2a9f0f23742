"""`hwprune export` on a saved model: the file, its parity printed, and one-line errors for bad input."""

import onnxruntime as ort
import pytest
import torch
from helpers import assert_one_line_error, run_cli


@pytest.fixture
def saved(tmp_path, tiny_file):
    from hwprune.cli.main import main

    out = tmp_path / "run"
    argv = [
        "prune",
        "--model",
        f"{tiny_file}:tiny_resnet",
        "--budget",
        "latency=1s",
        "--max-iters",
        "1",
        "--input-shape",
        "3x8x8",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return out


def test_export_writes_a_dynamic_batch_onnx_and_prints_parity(capsys, saved, tmp_path):
    code, out, _ = run_cli(capsys, "export", saved, "--out", tmp_path / "m.onnx", "--trust-code")
    assert code == 0 and "parity on example inputs, batch sizes [1, 3]: max abs difference" in out
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input_0": torch.randn(7, 3, 8, 8).numpy()})[0].shape == (7, 4)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--dtype", "int8"], "static int8 needs calibration data"),
        (["--int8", "dynamic"], "applies to --dtype int8 only"),
        (["--format", "pt2", "--dtype", "int8"], "use --format onnx"),
        (["--batch-size", "0"], "at least 1"),
    ],
)
def test_export_errors_are_one_line(capsys, saved, tmp_path, argv, needle):
    code, _, err = run_cli(capsys, "export", saved, "--out", tmp_path / "m.onnx", "--trust-code", *argv)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "m.onnx").exists()


def test_export_of_a_directory_that_is_not_a_saved_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", tmp_path, "--out", tmp_path / "m.onnx")
    assert_one_line_error(code, err, "is not a saved model")


def test_serve_without_a_token_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.delenv("HWPRUNE_TOKEN", raising=False)
    code, _, err = run_cli(capsys, "serve", "--port", "1")
    assert_one_line_error(code, err, "needs a token")
