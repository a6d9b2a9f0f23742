"""A pruned model as the file it is deployed as: ONNX (fp32, fp16, int8) or a torch.export program (.pt2),
checked against the torch model it came from.

Batch size (and a text model's sequence length) are dynamic axes unless `dynamic=False`: a file fixed to
the batch latency was measured at fails on any other. Parity is checked on the example inputs at two batch
sizes (so a dynamic axis that was traced as a constant shows) and, given data, on its validation batches:
the largest absolute difference of the outputs, top-1 agreement and the metric of both.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.files import write_file_atomic
from hwprune.core.modules import call, eval_mode, logits, primary_output
from hwprune.evaluate.metrics import Metric, top1
from hwprune.hardware.ort import PROVIDER, onnx_bytes, session_options
from hwprune.hardware.quant import graph_inputs, quantize_graph

FORMATS = ("onnx", "pt2")
DTYPES = ("fp32", "fp16", "int8")
#: Calibration batches for static int8 when the caller does not say: ORT's MinMax ranges settle within a
#: few hundred samples (the demo's int8 accuracy was the same with 4 and 16 batches of 64).
CALIBRATION_BATCHES = 8


@dataclass
class Parity:
    """The exported file against the torch model, on the same inputs."""

    #: What was compared: "example inputs" or "example inputs + N samples of DATA".
    checked_on: str
    batch_sizes: list[int]
    max_abs_diff: float
    samples: int = 0
    #: The largest |output| of the torch model on the same inputs: the scale max_abs_diff is read against.
    output_scale: float = 0.0
    #: Share of samples whose top-1 class is the same in both (classification outputs only).
    agreement: float | None = None
    metric_torch: float | None = None
    metric_exported: float | None = None


@dataclass
class Exported:
    path: str
    format: str
    dtype: str
    size_bytes: int
    parity: Parity
    #: "static" or "dynamic" for int8, else None.
    int8_mode: str | None = None
    notes: list[str] = field(default_factory=list)


def _as_args(inputs) -> tuple[tuple, dict]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    return (tuple(inputs), {}) if isinstance(inputs, (tuple, list)) else ((inputs,), {})


def _map(inputs, fn):
    if isinstance(inputs, dict):
        return {k: fn(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(fn(v) for v in inputs)
    return fn(inputs)


def _batch_of(inputs) -> int:
    args, kwargs = _as_args(inputs)
    return int((next(iter(kwargs.values())) if kwargs else args[0]).shape[0])


def resized(inputs, batch: int):
    """The example inputs at another batch size (samples repeated), for tracing and the parity check."""
    return _map(inputs, lambda v: v.repeat_interleave(batch // v.shape[0] + 1, 0)[:batch].contiguous())


def _half(inputs):
    return _map(inputs, lambda v: v.half() if v.is_floating_point() else v)


def _feeds(inputs, names: list[str]) -> dict[str, np.ndarray]:
    args, kwargs = _as_args(inputs)
    values = list(kwargs.values()) if kwargs else list(args)
    keys = list(kwargs) if kwargs else [f"input_{i}" for i in range(len(values))]
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in zip(keys, values, strict=True)}
    return {n: arrays[n] for n in names}


def is_linear_only(model: nn.Module) -> bool:
    """No convolutions (a transformer, an MLP): dynamic int8 is ORT's advice there, since activation
    ranges vary from input to input; a CNN with a large Linear head is still static's case."""
    return not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def int8_mode(model: nn.Module, mode: str | None, has_calibration: bool) -> str:
    """The int8 mode to use: the one asked for, else dynamic for models without convolutions, else static."""
    if mode is None:
        mode = "dynamic" if is_linear_only(model) else "static"
    if mode == "static" and not has_calibration:
        raise HwpruneError("static int8 needs calibration data: give --data (or --int8 dynamic, no calibration)")
    return mode


def onnx_graph(
    model: nn.Module,
    example,
    dtype: str = "fp32",
    calibration: Iterable | None = None,
    mode: str | None = None,
    dynamic: bool = True,
) -> tuple[bytes, str | None]:
    """The serialized ONNX graph of `model` at `dtype`, and the int8 mode used (None unless int8).

    `calibration`: batches of model inputs (static int8 only). Tracing uses batch 2 for a dynamic graph:
    a batch of 1 lets the tracer bake size-1 broadcasts in as constants.
    """
    trace = resized(example, 2) if dynamic and _batch_of(example) == 1 else example
    if dtype == "fp16":
        return onnx_bytes(copy.deepcopy(model).half(), _half(trace), dynamic), None
    graph = onnx_bytes(model, trace, dynamic)
    if dtype != "int8":
        return graph, None
    batches = list(calibration) if calibration is not None else []
    mode = int8_mode(model, mode, bool(batches))
    names = graph_inputs(graph)
    return quantize_graph(graph, mode, [_feeds(b, names) for b in batches]), mode


def _pt2(model: nn.Module, example, dtype: str, dynamic: bool) -> bytes:
    if dtype == "int8":
        raise HwpruneError("int8 is exported through ONNX Runtime's quantizer: use --format onnx with --dtype int8")
    m, x = (copy.deepcopy(model).half(), _half(example)) if dtype == "fp16" else (model, example)
    trace = resized(x, 2) if dynamic and _batch_of(x) == 1 else x
    args, kwargs = _as_args(trace)
    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1)
        shapes = _map(trace, lambda v: {0: batch}) if not kwargs else {k: {0: batch} for k in kwargs}
        shapes = shapes if kwargs else (shapes if isinstance(trace, (tuple, list)) else (shapes,))
    try:
        with eval_mode(m), torch.no_grad():
            ep = torch.export.export(m, args, kwargs or None, dynamic_shapes=shapes)
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise HwpruneError(f"torch.export cannot export {type(model).__name__} ({msg}); try --format onnx") from None
    f = io.BytesIO()
    torch.export.save(ep, f)
    return f.getvalue()


class _Exported:
    """The exported bytes run like the model: a callable on inputs that returns the primary output."""

    def __init__(self, data: bytes, fmt: str, dtype: str):
        self.fmt, self.dtype = fmt, dtype
        if fmt == "onnx":
            self.session = ort.InferenceSession(data, session_options(torch.get_num_threads()), providers=[PROVIDER])
            self.names = [i.name for i in self.session.get_inputs()]
        else:
            self.module = torch.export.load(io.BytesIO(data)).module()

    def __call__(self, inputs) -> torch.Tensor:
        if self.fmt == "onnx":
            x = _half(inputs) if self.dtype == "fp16" else inputs
            return torch.from_numpy(self.session.run(None, _feeds(x, self.names))[0]).float()
        x = _half(inputs) if self.dtype == "fp16" else inputs
        with torch.no_grad():
            return primary_output(call(self.module, x)).float()


def runner(data: bytes, fmt: str = "onnx", dtype: str = "fp32") -> _Exported:
    """The exported bytes loaded (ONNX Runtime, or torch.export.load): a callable on model inputs."""
    return _Exported(data, fmt, dtype)


def _fixed_batches(data: Iterable, b: int):
    """Batches cut to exactly `b` samples (a graph with a fixed batch runs on nothing else)."""
    for x, y in data:
        n = _batch_of(x)
        for i in range(0, n - b + 1, b):
            cut = _map(x, lambda v, i=i: v[i : i + b])
            yield cut, (y[i : i + b] if y is not None else None)


def check_parity(
    run: _Exported,
    model: nn.Module,
    example,
    data: Iterable | None = None,
    metric: Metric | None = None,
    dynamic: bool = True,
) -> Parity:
    """`run` (the exported file) against `model` on the example inputs (at two batch sizes when `dynamic`)
    and on `data`."""
    b = _batch_of(example)
    sizes = [b, b + 2] if dynamic else [b]
    if data is not None and not dynamic:
        data = _fixed_batches(data, b)
    diff = scale = 0.0
    with eval_mode(model), torch.inference_mode():
        for n in sizes:
            x = resized(example, n)
            ref, got = logits(model, x).float(), run(x)
            scale = max(scale, float(ref.abs().max()))
            if tuple(ref.shape) != tuple(got.shape):
                raise HwpruneError(
                    f"the exported file returns shape {tuple(got.shape)} at batch {n}, torch {tuple(ref.shape)}"
                )
            diff = max(diff, float((ref - got).abs().max()))
    if data is None:
        return Parity("example inputs", sizes, diff, output_scale=scale)
    metric = metric or top1
    agree = total_t = total_e = 0.0
    n = 0
    classify = True
    with eval_mode(model), torch.inference_mode():
        for x, y in data:
            ref, got = logits(model, x).float(), run(x)
            diff = max(diff, float((ref - got).abs().max()))
            scale = max(scale, float(ref.abs().max()))
            k = len(ref)
            # Top-1 agreement means something for class scores against class labels, not for embeddings.
            classify = classify and ref.dim() == 2 and y is not None and y.dim() == 1 and not y.is_floating_point()
            agree += float((ref.argmax(-1) == got.argmax(-1)).float().mean()) * k
            if y is not None:
                total_t += metric(ref, y) * k
                total_e += metric(got, y) * k
            n += k
    labeled = y is not None if n else False
    return Parity(
        f"example inputs + {n} samples of the data",
        sizes,
        diff,
        samples=n,
        output_scale=scale,
        agreement=agree / n if n and classify else None,
        metric_torch=total_t / n if labeled else None,
        metric_exported=total_e / n if labeled else None,
    )


def export_model(
    model: nn.Module,
    example,
    path: str | Path,
    fmt: str = "onnx",
    dtype: str = "fp32",
    calibration: Iterable | None = None,
    int8: str | None = None,
    dynamic: bool = True,
    data: Iterable | None = None,
    metric: Metric | None = None,
) -> Exported:
    """Write `model` to `path` as `fmt` at `dtype` (atomically) and check it against the torch model.

    `calibration`: batches of model inputs for static int8 (e.g. a few training batches); `int8`: "static"
    or "dynamic" (default: dynamic for models without convolutions, else static); `data`: (inputs, targets) batches
    for the parity check, with `metric` (default top-1).
    """
    if fmt not in FORMATS:
        raise HwpruneError(f"format '{fmt}': choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise HwpruneError(f"dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    model.eval()
    mode = None
    if fmt == "onnx":
        blob, mode = onnx_graph(model, example, dtype, calibration, int8, dynamic)
    else:
        blob = _pt2(model, example, dtype, dynamic)
    try:
        run = runner(blob, fmt, dtype)
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        fix = (
            " (ONNX Runtime's CPU provider lacks fp16 kernels for it: fp16 is for GPU runtimes)"
            if dtype == "fp16"
            else ""
        )
        raise HwpruneError(f"the exported {fmt} {dtype} file does not load: {msg}{fix}") from None
    parity = check_parity(run, model, example, data, metric, dynamic)
    out = write_file_atomic(path, blob)
    return Exported(str(out), fmt, dtype, len(blob), parity, mode)
