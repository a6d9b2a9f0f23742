"""Deployable files: ONNX fp32/fp16/int8 and .pt2, with dynamic batch, parity, and a bare-ORT consumer."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
from tiny_models import tiny_resnet

from hwprune.core.errors import HwpruneError
from hwprune.export.deploy import export_model, int8_mode


def _digits_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    ).eval()


def _batches(n=4, b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 1, 8, 8, generator=g), torch.randint(0, 10, (b,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize(("fmt", "dtype"), [("onnx", "fp32"), ("onnx", "fp16"), ("pt2", "fp32")])
def test_export_checks_parity_at_two_batch_sizes(tmp_path, fmt, dtype):
    model, x = tiny_resnet()
    e = export_model(model, x[:1], tmp_path / f"m.{fmt}", fmt, dtype)
    assert e.parity.batch_sizes == [1, 3]  # the dynamic batch axis is exercised, not only the traced one
    assert e.parity.max_abs_diff < (1e-2 if dtype == "fp16" else 1e-4)
    assert (tmp_path / f"m.{fmt}").stat().st_size == e.size_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"m.{fmt}"]  # nothing half-written left


def test_static_int8_is_calibrated_and_agrees_with_the_float_model(tmp_path):
    model = _digits_cnn()
    batches = _batches()
    e = export_model(
        model, batches[0][0][:1], tmp_path / "m.onnx", "onnx", "int8", calibration=[x for x, _ in batches], data=batches
    )
    p = e.parity
    assert e.int8_mode == "static" and p.samples == 64
    assert p.agreement >= 0.9  # int8 flips a few argmaxes of near-tied random logits at most
    assert abs(p.metric_exported - p.metric_torch) <= 0.1
    fp32 = export_model(model, batches[0][0][:1], tmp_path / "f.onnx")
    assert e.size_bytes < fp32.size_bytes  # int8 weights


def test_int8_mode_defaults_and_static_without_data_is_refused():
    assert int8_mode(_digits_cnn(), None, True) == "static"
    assert int8_mode(nn.Sequential(nn.Linear(4, 4)), None, False) == "dynamic"  # no convolution: dynamic
    with pytest.raises(HwpruneError, match="calibration data"):
        int8_mode(_digits_cnn(), None, False)


def test_static_export_fixes_the_batch(tmp_path):
    model, x = tiny_resnet()
    import onnxruntime as ort

    export_model(model, x[:1], tmp_path / "s.onnx", dynamic=False)
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, 3, 8, 8]


def test_the_exported_file_runs_where_only_onnxruntime_and_numpy_are_imported(tmp_path):
    """The deployment side: a fresh process with onnxruntime and numpy, no torch, no hwprune."""
    model = _digits_cnn()
    batches = _batches(2)
    for name, dtype in (("fp32.onnx", "fp32"), ("int8.onnx", "int8")):
        export_model(model, batches[0][0][:1], tmp_path / name, "onnx", dtype, calibration=[x for x, _ in batches])
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import onnxruntime as ort
        x = np.load({str(tmp_path / "x.npy")!r})
        for name in ("fp32.onnx", "int8.onnx"):
            s = ort.InferenceSession({str(tmp_path)!r} + "/" + name, providers=["CPUExecutionProvider"])
            out = s.run(None, {{s.get_inputs()[0].name: x}})[0]
            print(name, out.shape, np.isfinite(out).all())
        assert "torch" not in sys.modules and "hwprune" not in sys.modules, sorted(sys.modules)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["fp32.onnx (5, 10) True", "int8.onnx (5, 10) True"]


def test_bad_format_and_dtype_are_one_line_errors(tmp_path):
    model, x = tiny_resnet()
    with pytest.raises(HwpruneError, match="format 'tflite'"):
        export_model(model, x, tmp_path / "m", "tflite")
    with pytest.raises(HwpruneError, match="use --format onnx"):
        export_model(model, x, tmp_path / "m.pt2", "pt2", "int8")
