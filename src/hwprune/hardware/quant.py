"""int8 ONNX graphs through ONNX Runtime's own quantization tools, for deployment and for the int8 target.

Static (QDQ, per-channel int8 weights, uint8 activations with MinMax ranges from calibration batches) is
the format ORT's CPU provider fuses into QLinearConv / QLinearMatMul kernels; dynamic (int8 weights,
activations quantized per batch at run time) needs no calibration data and is what ORT advises for
Linear-heavy models such as transformers, whose activation ranges vary by input.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from hwprune.core.errors import HwpruneError

MODES = ("static", "dynamic")


class _Feeds(CalibrationDataReader):
    """ORT's calibration interface over an iterable of feeds (input name -> array)."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def _preprocessed(graph: bytes, tmp: Path) -> Path:
    """ORT's recommended pre-processing (symbolic shape inference, graph optimisation): quantization needs
    every tensor's shape to place Q/DQ pairs. Falls back to the graph as it is where it cannot run."""
    src, dst = tmp / "fp32.onnx", tmp / "pre.onnx"
    src.write_bytes(graph)
    try:
        # Its symbolic shape inference writes a scratch model (sym_shape_infer_temp.onnx + external data) into
        # the working directory and leaves it there when it fails: keep that inside our temporary directory.
        with contextlib.chdir(tmp):
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return dst
    except Exception:  # the optimiser rejects some traced graphs; quantizing the raw graph still works
        return src


@contextlib.contextmanager
def _quiet_root_logger():
    """ORT's quantizer logs advice through the root logger ("consider pre-processing", on a graph its
    pre-processor rejected); the user did not ask for it and can do nothing with it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_graph(graph: bytes, mode: str = "static", feeds: Iterable[dict[str, np.ndarray]] | None = None) -> bytes:
    """`graph` (a serialized fp32 ONNX model) quantized to int8.

    `static` needs `feeds`, calibration batches by input name (the data the model will see: their value
    ranges set the activation scales); `dynamic` ignores them.
    """
    if mode not in MODES:
        raise HwpruneError(f"int8 mode '{mode}': choose one of {', '.join(MODES)}")
    with tempfile.TemporaryDirectory(prefix="hwprune-quant-") as d, _quiet_root_logger():
        tmp = Path(d)
        src, out = _preprocessed(graph, tmp), tmp / "int8.onnx"
        try:
            if mode == "dynamic":
                quantize_dynamic(str(src), str(out), per_channel=True, weight_type=QuantType.QInt8)
            else:
                if feeds is None:
                    raise HwpruneError("static int8 quantization needs calibration batches (--data)")
                quantize_static(
                    str(src),
                    str(out),
                    _Feeds(feeds),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    # uint8 activations with int8 weights: the pair ORT's x86 kernels (MLAS, VNNI) run fast.
                    # Measured on dense ResNet-50 here (batch 1, 2 threads): u8/s8 13.9 ms, s8/s8 41.4 ms,
                    # fp32 39.7 ms, as s8/s8 QDQ pairs are not fused into QLinearConv.
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
        except HwpruneError:
            raise
        except Exception as e:
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise HwpruneError(f"ONNX Runtime could not quantize this graph ({mode}): {msg}") from None
        return out.read_bytes()


def graph_inputs(graph: bytes) -> list[str]:
    """Names of the graph's real inputs (initializers that older exporters list as inputs excluded)."""
    model = onnx.load_from_string(graph)
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]
