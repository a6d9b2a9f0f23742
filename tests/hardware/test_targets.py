"""Measured targets (cpu-ort, cuda*) and the predicted-vs-measured validation of the cost model."""

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from tiny_models import TinyCNN, tiny_resnet

from hwprune.core.errors import HwpruneError
from hwprune.evaluate.validate import validate
from hwprune.hardware.ort import export_onnx, session_options
from hwprune.hardware.targets import get_target, list_targets


def test_measured_targets_are_listed():
    names = {n for n, _ in list_targets()}
    assert {"cpu", "cpu-ort", "cuda", "cuda-fp16", "cuda-bf16"} <= names


def test_cpu_ort_times_a_layer_and_models():
    target = get_target("cpu-ort", threads=1)
    t = target.time_layer(nn.Conv2d(8, 16, 3, padding=1), torch.randn(1, 8, 16, 16))
    assert t.n == 3 and 0 < t.q1 <= t.median <= t.q3 < 1  # FAST_PROTOCOL: 3 calls
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048))  # ~5.8M MACs per sample
    small = nn.Linear(784, 10)  # ~8k MACs: 700x fewer
    tb, ts = target.time_models([big, small], torch.randn(4, 784))
    assert tb.n == ts.n == 3
    assert tb.median > 2 * ts.median  # a generous ratio: the figures are 3-call noise


def test_cpu_ort_fingerprint_differs_from_cpu():
    ort_fp = get_target("cpu-ort", threads=1).fingerprint()
    cpu = get_target("cpu", threads=1)
    assert ort_fp["runtime"] == f"onnxruntime {ort.__version__}" and ort_fp["provider"] == "CPUExecutionProvider"
    assert ort_fp["opset"] == 17 and ort_fp["threads"] == 1
    assert get_target("cpu-ort", threads=1).device_key() != cpu.device_key()
    assert get_target("cpu-ort", threads=1).device_key() != get_target("cpu-ort", threads=2).device_key()


def test_session_options_are_pinned():
    so = session_options(3)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.get_session_config_entry("session.force_spinning_stop") == "1"


def test_export_onnx_runs_in_ort_and_matches_torch(tmp_path):
    model, x = tiny_resnet()
    path = export_onnx(model, x, tmp_path / "out" / "model.onnx")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temporary file left behind
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input_0": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert model.training  # exported in eval mode, then left in the mode the caller had it in


def test_export_failure_is_one_line(tmp_path):
    class Fft(nn.Module):
        def forward(self, x):
            return torch.fft.fft(x).real  # no ONNX op for complex FFT in opset 17

    with pytest.raises(HwpruneError, match=r"cannot export Fft to ONNX .*aten::fft_fft") as e:
        export_onnx(Fft(), torch.randn(2, 8), tmp_path / "fft.onnx")
    assert "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cuda_without_gpu_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda-fp16", "cuda-bf16"):
        with pytest.raises(HwpruneError, match=f"^target {name} needs a CUDA GPU; none is visible$"):
            get_target(name)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name,dtype", [("cuda", torch.float32), ("cuda-fp16", torch.float16), ("cuda-bf16", torch.bfloat16)]
)
def test_cuda_targets_copy_to_device_and_dtype(name, dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bfloat16 on this GPU")
    target = get_target(name)
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    copy = target.prepare(model)
    assert copy.conv1.weight.dtype == dtype and copy.conv1.weight.is_cuda
    assert model.conv1.weight.dtype == torch.float32 and not model.conv1.weight.is_cuda  # caller's model untouched
    xd = target.prepare_inputs((x, torch.arange(3)))
    assert xd[0].dtype == dtype and xd[1].dtype == torch.int64 and xd[1].is_cuda  # token ids keep their dtype
    t = target.time_layer(nn.Conv2d(8, 16, 3, padding=1), torch.randn(1, 8, 16, 16))
    assert t.n == 3 and 0 < t.median < 1
    td, tp = target.time_models([model, model], x)
    assert td.n == 3 and td.median > 0 and tp.median > 0
    fp = target.fingerprint()
    assert fp["dtype"] == {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    assert fp["tf32"] is False and fp["gpu"] == torch.cuda.get_device_name()
    assert len({get_target(n).device_key() for n in ("cuda", "cuda-fp16")}) == 2


@pytest.mark.gpu
def test_cuda_event_timing_measures_device_time():
    from hwprune.hardware.cuda import time_interleaved_cuda
    from hwprune.hardware.timing import TimingProtocol

    cycles = 1_000_000  # ~0.5-1 ms of spinning on a GPU clocked at 1-2 GHz
    short, long = time_interleaved_cuda(
        [lambda: torch.cuda._sleep(cycles), lambda: torch.cuda._sleep(4 * cycles)], TimingProtocol(2, 0.0, 5, 0.0)
    )
    # The events see the kernel's own time (4x the cycles, ~4x the time), not the microseconds it takes to launch.
    assert short.n == long.n == 5 and 1e-4 < short.median < 5e-3
    assert 3 < long.median / short.median < 5


@pytest.mark.gpu
def test_cuda_settings_are_pinned_and_restored():
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        target = get_target("cuda")
        seen = []

        class Probe(nn.Module):
            def forward(self, x):
                seen.append(torch.backends.cudnn.allow_tf32)
                return x

        target.time_models([Probe()], torch.randn(2))
        assert set(seen) == {False} and torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32 = before


def test_validate_on_analytic_target_matches_hand_computation():
    torch.manual_seed(0)
    model, x = TinyCNN().eval(), torch.randn(2, 3, 8, 8)
    rep = validate(model, x, "analytic-test", widths={"conv1": 8, "conv2": 12})
    # A formula target is bilinear in (c_in, c_out) per layer, which the table's interpolation reproduces.
    assert [c.name for c in rep.layers] == ["conv1", "conv2", "fc"]
    assert max(abs(c.error) for c in rep.layers) < 1e-9 and rep.median_abs_layer_error < 1e-9
    assert [(c.c_in, c.c_out) for c in rep.layers] == [(3, 8), (8, 12), (12, 5)]
    dense, pruned = rep.models
    # By hand, 1 us + 10 ps/MAC per layer at batch 2 on 8x8: conv1 3->8: 2*8*64 outputs x 3*9 = 27648 MACs;
    # conv2 8->12: 2*12*64 x 8*9 = 110592; fc 12->5: 2*12*5 = 120. Plus 50 us per model call.
    layer_sum = 3e-6 + (27648 + 110592 + 120) * 1e-11
    assert pruned.layer_sum_s == pytest.approx(layer_sum, rel=1e-9)
    assert pruned.measured_s == pytest.approx(layer_sum + 5e-5, rel=1e-9)
    assert pruned.remainder_fit == dense.remainder_fit == "uniform 0.85, 0.55, 0.3 + split 0.3/0.85"
    # Fitted on three calibration plans (neither model predicted), the remainder recovers this target's constant
    # 50 us per call exactly (R1 = 0): both out-of-sample predictions are exact.
    assert pruned.remainder_s == pytest.approx(5e-5, rel=1e-6) and abs(pruned.error) < 1e-6
    assert dense.layer_sum_s + 5e-5 == pytest.approx(dense.measured_s, rel=1e-9) and abs(dense.error) < 1e-6
    d = rep.to_dict()
    assert d["widths"] == {"conv1": 8, "conv2": 12} and len(d["layers"]) == 3 and d["models"][1]["name"] == "pruned"
    text = rep.to_table()
    assert "conv2" in text and "remainder fitted on" in text and "median |error|" in text


def test_validate_dense_only_and_bad_widths():
    torch.manual_seed(0)
    model, x = TinyCNN().eval(), torch.randn(2, 3, 8, 8)
    rep = validate(model, x, "analytic-test")
    (dense,) = rep.models
    # Predicted out of sample from the calibration plans: the constant 50 us per call is recovered exactly.
    assert dense.remainder_fit == "uniform 0.85, 0.55, 0.3 + split 0.3/0.85" and abs(dense.error) < 1e-6
    assert dense.measured_s - dense.layer_sum_s == pytest.approx(5e-5, rel=1e-6)
    with pytest.raises(HwpruneError, match="widths name group 'nope'"):
        validate(model, x, "analytic-test", widths={"nope": 3})
    with pytest.raises(HwpruneError, match="between 1 and its size 16"):
        validate(model, x, "analytic-test", widths={"conv1": 17})


def test_validate_on_cpu_ort_runs():
    torch.manual_seed(0)
    model, x = TinyCNN().eval(), torch.randn(1, 3, 8, 8)
    rep = validate(model, x, get_target("cpu-ort", threads=1), widths={"conv1": 8})
    assert len(rep.layers) == 3 and all(c.measured_s > 0 and c.predicted_s > 0 for c in rep.layers)
    assert [m.name for m in rep.models] == ["dense", "pruned"]
    assert rep.fingerprint["runtime"].startswith("onnxruntime")


def test_prune_end_to_end_on_cpu_ort(tiny_file):
    from hwprune.cli.run import run_options

    assert os.environ["HWPRUNE_TIMING"] == "fast"
    # An absolute budget far above the tiny model's latency: every plan fits, so the loop's path does not
    # depend on 3-call timing noise; two iterations exercise the measure-refit-retry path.
    cfg = dict(model=f"{tiny_file}:tiny_resnet", budget="latency=1s", target="cpu-ort", threads=1, max_iters=2)
    result = run_options(cfg, progress=False)
    r = result.report
    assert r.budget.met and r.fingerprint["runtime"].startswith("onnxruntime")
    assert r.latency_table.entries_measured > 0 and len(r.loop) == 2
    with torch.no_grad():
        assert result.model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_cpu_ort_in_graph_times_match_every_layer_of_a_tiny_resnet():
    """ORT's profiler times each conv/linear kernel inside the whole graph; every layer is found by shape."""
    from hwprune.cost.model import CostModel
    from hwprune.groups.analysis import analyze
    from hwprune.hardware.ort import WEIGHT_OPS

    torch.manual_seed(0)
    model, x = tiny_resnet()
    target = get_target("cpu-ort", threads=1)
    nodes = target.in_graph_times(model, x)
    assert nodes and all(n.op in WEIGHT_OPS and n.seconds > 0 for n in nodes)
    # Each kernel's share of its run: a fraction, the weight kernels together at most the whole run, and
    # `at` puts it on another timing's scale.
    assert all(0 < n.share < 1 for n in nodes) and sum(n.share for n in nodes) <= 1.0
    assert nodes[0].at(2e-3).seconds == pytest.approx(2e-3 * nodes[0].share)
    a = analyze(model, x)
    curves = {la.name: (lambda ci, co: 1e-3) for la in a.layers}  # a flat 1 ms table
    cm = CostModel(a, curves)
    assert cm.add_in_graph(cm.dense_widths(), nodes) == len(a.layers)
    # Corrected, the layer sum is the profiled kernels' sum (a 1 ms table says nothing about them).
    assert cm.layer_sum(cm.dense_widths()) == pytest.approx(sum(n.seconds for n in nodes), rel=1e-9)


def test_ratio_of_an_interleaved_measurement_pairs_each_round():
    """Per-round ratios cancel drift that moves both models' medians; without rounds, medians are used."""
    from hwprune.hardware.timing import Timing, ratio, time_interleaved
    from hwprune.hardware.timing import summary as _summary

    # The machine slows 3x halfway through: B is always half of A in its own round, but the medians of
    # unequal-length phases would not say so.
    a = _summary([1.0, 1.0, 1.0, 3.0, 3.0])
    b = _summary([0.5, 0.5, 0.5, 1.5, 1.5])
    assert ratio(b, a) == pytest.approx(0.5)
    b_drift = _summary([0.5, 0.5, 1.5, 1.5, 1.5])  # the same pair, the slowdown one round earlier for B
    assert b_drift.median / a.median == pytest.approx(1.5)  # ratio of medians: 3x off
    assert ratio(b_drift, a) == pytest.approx(0.5)  # still 0.5 in three of five rounds: the median
    assert ratio(Timing(2.0, 2.0, 2.0, 1), Timing(4.0, 4.0, 4.0, 1)) == 0.5  # no samples: medians
    ta, tb = time_interleaved([lambda: None, lambda: None])
    assert len(ta.samples) == len(tb.samples) == ta.n and "samples" not in ta.to_dict()
