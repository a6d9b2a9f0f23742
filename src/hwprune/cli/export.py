"""`hwprune export DIR --format onnx|pt2 --dtype fp32|fp16|int8 --out FILE`: a saved model as a deployable
file, with its parity against the torch model printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from hwprune.core.errors import HwpruneError
from hwprune.export.deploy import CALIBRATION_BATCHES, DTYPES, FORMATS, Exported, export_model
from hwprune.hardware.quant import MODES
from hwprune.zoo.specs import resolve
from hwprune.zoo.userdata import DATA_HELP, resolve_callable, resolve_data


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a saved model: an `hwprune prune --out` directory or its model/ directory")
    p.add_argument(
        "--format",
        default="onnx",
        choices=FORMATS,
        help="onnx (ONNX Runtime, TensorRT, ...) or pt2 (torch.export program) (default onnx)",
    )
    p.add_argument("--dtype", default="fp32", choices=DTYPES, help="weights and activations (default fp32)")
    p.add_argument(
        "--int8",
        default=None,
        choices=MODES,
        help="int8 mode: static (QDQ, calibrated on --data) or dynamic (activations quantized at run time) "
        "(default: dynamic for models without convolutions, such as transformers, else static)",
    )
    p.add_argument("--out", required=True, help="the file to write (e.g. model.onnx, model.pt2)")
    p.add_argument("--data", default=None, help=f"calibration (int8) and parity data: {DATA_HELP}")
    p.add_argument(
        "--metric", default=None, help="path/to/file.py:fn, fn(outputs, targets) -> batch mean (default top-1 accuracy)"
    )
    p.add_argument(
        "--calibration-batches",
        type=int,
        default=CALIBRATION_BATCHES,
        help=f"training batches of --data for static int8 ranges (default {CALIBRATION_BATCHES})",
    )
    p.add_argument("--static", action="store_true", help="fix the batch size (and sequence length) to the example's")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the example inputs (default 1)")
    p.add_argument("--input-shape", default=None, help="one sample's shape (default: the one saved with the model)")
    p.add_argument("--trust-code", action="store_true", help="rebuild a model whose architecture is a saved .py")


def _model_dir(d: str) -> str:
    path = Path(d)
    if (path / "model" / "spec.json").exists():
        return str(path / "model")
    if not (path / "spec.json").exists():
        raise HwpruneError(f"{d} is not a saved model: give an `hwprune prune --out` directory or its model/")
    return str(path)


def _print(e: Exported) -> None:
    p = e.parity
    mode = f" ({e.int8_mode})" if e.int8_mode else ""
    print(f"wrote {e.path}: {e.format} {e.dtype}{mode}, {e.size_bytes / 1e6:.2f} MB")
    print(
        f"parity on {p.checked_on}, batch sizes {p.batch_sizes}: max abs difference {p.max_abs_diff:.3g} "
        f"(outputs up to {p.output_scale:.3g})"
    )
    if p.agreement is not None:
        print(f"top-1 agreement with the torch model: {p.agreement:.2%} of {p.samples} samples")
    if p.metric_torch is not None:
        print(
            f"metric: torch {p.metric_torch:.4f}, exported {p.metric_exported:.4f} "
            f"({p.metric_exported - p.metric_torch:+.4f})"
        )


def cmd_export(a: argparse.Namespace) -> int:
    if a.batch_size < 1 or a.calibration_batches < 1:
        raise HwpruneError("--batch-size and --calibration-batches must be at least 1")
    if a.dtype != "int8" and a.int8:
        raise HwpruneError(f"--int8 {a.int8} applies to --dtype int8 only")
    out = Path(a.out)
    if out.is_dir() or (out.parent.exists() and not out.parent.is_dir()):
        raise HwpruneError(f"--out {a.out}: give a file path (e.g. model.onnx)")
    ref = resolve(_model_dir(a.dir), a.batch_size, a.input_shape, progress=False, trust_code=a.trust_code)
    data = resolve_data(a.data, ref.example_inputs, ref.tokenizer, ref.model)
    calibration = None
    if data is not None:
        calibration = [x for x, _ in data.calibration(a.calibration_batches)]
    e = export_model(
        ref.model,
        ref.example_inputs,
        out,
        a.format,
        a.dtype,
        calibration=calibration,
        int8=a.int8,
        dynamic=not a.static,
        data=data.validation() if data is not None else None,
        metric=resolve_callable(a.metric, "--metric"),
    )
    _print(e)
    return 0
