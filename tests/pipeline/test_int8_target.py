"""An int8 target prunes on int8 timings and writes the deployable int8 file with its figures."""

import json

import onnxruntime as ort
import torch
from tiny_models import tiny_resnet

import hwprune
from hwprune.report.files import markdown


def test_cpu_ort_int8_writes_the_deployable_file_and_its_figures(tmp_path):
    model, x = tiny_resnet()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(4)]
    result = hwprune.prune(
        model,
        x,
        budget="latency=1s",
        target="cpu-ort-int8",
        data=data,
        finetune=0,
        progress=False,
        config={"loop": {"max_iters": 1}, "target": {"threads": 1}},
    )
    r = result.report
    assert r.fingerprint["dtype"] == "int8-static-qdq-u8s8" and r.budget.met
    d = r.deployment
    assert d.file == "model.int8.onnx" and d.int8_mode == "static" and d.dtype == "int8"
    assert d.size_bytes > 0 and d.fp32_size_bytes > 0  # a tiny model: the Q/DQ scales outweigh int8 savings
    assert d.dense_fp32_ms > 0 and d.deployed_ms > 0 and d.speedup > 0 and d.rounds >= 3
    assert d.speedup_ci[0] <= d.speedup <= d.speedup_ci[1]
    assert d.metric_fp32 is not None and abs(d.metric_deployed - d.metric_fp32) <= 0.25
    assert "4 training batches" in d.calibration and d.agreement is not None
    out = result.save(tmp_path / "out")
    sess = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input_0": torch.randn(5, 3, 8, 8).numpy()})[0].shape == (5, 4)  # dynamic batch
    saved = json.loads((out / "report.json").read_text())
    assert saved["deployment"]["file"] == "model.int8.onnx"
    assert hwprune.Report.from_dict(saved).deployment == d
    assert "## Deployed: `model.int8.onnx`" in markdown(r) and "Speedup over the dense fp32 model" in markdown(r)


def test_float_targets_write_no_deployable_file(tmp_path):
    model, x = tiny_resnet()
    result = hwprune.prune(
        model, x, budget="latency=1s", target="cpu", finetune=0, progress=False, config={"loop": {"max_iters": 1}}
    )
    assert result.report.deployment is None and result.files == {}
    assert not (result.save(tmp_path / "o") / "model.int8.onnx").exists()
