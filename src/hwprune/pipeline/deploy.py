"""An int8 target's deployable file: the pruned model quantized on the data, checked, and timed against the
dense float32 model on the target itself (the figure a user deploying it gets)."""

from __future__ import annotations

import torch.nn as nn

from hwprune.export.deploy import CALIBRATION_BATCHES, Exported, check_parity, onnx_graph, runner
from hwprune.hardware.ort import onnx_bytes
from hwprune.hardware.timing import latency_estimate, ratio_estimate
from hwprune.pipeline.context import Run
from hwprune.report.schema import Deployment

INT8_FILE = "model.int8.onnx"


def _calibration(run: Run) -> tuple[list, str]:
    if run.data is None:
        return [run.example], "the example inputs only (no data given: activation ranges may not fit real inputs)"
    batches = [x for x, _ in run.data.calibration(CALIBRATION_BATCHES)]
    return batches, f"{len(batches)} training batches of {run.data.description}"


def deploy(run: Run, pruned: nn.Module) -> tuple[Deployment, dict[str, bytes]] | None:
    """For a quantized target (one with `quantize`): (the report's deployment figures, {file name: bytes});
    None for any other target."""
    mode = getattr(run.target, "quantize", None)
    if not mode or not hasattr(run.target, "time_graphs"):
        return None
    batches, calibration = _calibration(run)
    graph, mode = onnx_graph(pruned, run.example, "int8", batches, mode, dynamic=True)
    validation = run.data.validation() if run.data is not None else None
    parity = check_parity(runner(graph, "onnx", "int8"), pruned, run.example, validation, run.metric)
    dense32, pruned32 = onnx_bytes(run.dense, run.example, True), onnx_bytes(pruned, run.example, True)
    td, t32, t8 = run.target.time_graphs([dense32, pruned32, graph], run.example, final=True)
    combined, quant = ratio_estimate(t8, td), ratio_estimate(t8, t32)
    exported = Exported(INT8_FILE, "onnx", "int8", len(graph), parity, mode)
    return _record(exported, len(pruned32), td, t32, t8, combined, quant, calibration), {INT8_FILE: graph}


def _record(e: Exported, fp32_size: int, td, t32, t8, combined, quant, calibration: str) -> Deployment:
    p = e.parity
    return Deployment(
        file=e.path,
        format=e.format,
        dtype=e.dtype,
        int8_mode=e.int8_mode,
        size_bytes=e.size_bytes,
        fp32_size_bytes=fp32_size,
        dense_fp32_ms=td.median * 1e3,
        pruned_fp32_ms=t32.median * 1e3,
        deployed_ms=t8.median * 1e3,
        deployed_ci_ms=[latency_estimate(t8).low * 1e3, latency_estimate(t8).high * 1e3],
        speedup=1 / combined.value,
        speedup_ci=[1 / combined.high, 1 / combined.low],
        quantization_speedup=1 / quant.value,
        quantization_speedup_ci=[1 / quant.high, 1 / quant.low],
        rounds=combined.n,
        parity_on=p.checked_on,
        max_abs_diff=p.max_abs_diff,
        output_scale=p.output_scale,
        agreement=p.agreement,
        metric_fp32=p.metric_torch,
        metric_deployed=p.metric_exported,
        calibration=calibration,
    )
