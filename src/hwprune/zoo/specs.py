"""Model specs (`--model SPEC`): torchvision:NAME, example:NAME, path/file.py:function, or a saved dir."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call
from hwprune.export.model import load, read_spec
from hwprune.zoo.datasets import get_dataset
from hwprune.zoo.examples import get_example, trained_example

SPEC_HELP = "torchvision:NAME, example:NAME, path/to/file.py:function, or a directory saved by hwprune"


@dataclass
class ResolvedModel:
    model: nn.Module
    example_inputs: object  # a tensor (batch first), or a tuple/dict of them
    source: dict  # how to rebuild the architecture (stored in saved specs)
    spec: str


def _torchvision(name: str) -> nn.Module:
    import torchvision  # noqa: PLC0415  (slow to import; only torchvision: specs need it)

    names = torchvision.models.list_models()
    if name not in names:
        close = [n for n in names if name.lower()[:4] in n][:6]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise HwpruneError(f"unknown torchvision model '{name}'{hint}")
    return torchvision.models.get_model(name, weights=None)


def _from_file(path: str, fn: str):
    p = Path(path)
    if not p.is_file():
        raise HwpruneError(f"model file {path} not found")
    mod_spec = importlib.util.spec_from_file_location(f"hwprune_user_{p.stem}", p)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:
        raise HwpruneError(f"cannot import {path}: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, fn, None)):
        raise HwpruneError(f"{path} has no function '{fn}'")
    out = getattr(module, fn)()
    if isinstance(out, nn.Module):
        return out, None
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module):
        return out
    raise HwpruneError(f"{path}:{fn} must return an nn.Module or (nn.Module, example_inputs)")


def build_source(source: dict) -> nn.Module:
    """Build the (dense, untrained) architecture a saved spec names."""
    kind = source.get("kind")
    if kind == "torchvision":
        return _torchvision(source["name"])
    if kind == "example":
        return get_example(source["name"]).build()
    if kind == "file":
        return _from_file(source["path"], source["function"])[0]
    if kind == "object":
        raise HwpruneError(
            f"this model was saved from a Python object of class {source.get('class')}: rebuild it with "
            "hwprune.load(directory, model=<a dense instance of that class>)"
        )
    raise HwpruneError(f"saved model has an unknown source {source!r}")


def load_saved(directory, model: nn.Module | None = None) -> nn.Module:
    """A saved model, its dense architecture built from its recorded source unless `model` is given."""
    return load(directory, model, builder=build_source)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(t) for t in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise HwpruneError(f"--input-shape '{text}' must look like 3x224x224 (per sample, no batch)") from None
    if not shape or min(shape) < 1:
        raise HwpruneError(f"--input-shape '{text}' must be positive integers like 3x224x224")
    return shape


def resolve(spec: str, batch_size: int = 1, input_shape: str | None = None, progress: bool = True) -> ResolvedModel:
    """Turn a model SPEC into a model and example inputs of the requested batch size; check they fit."""
    if batch_size < 1:
        raise HwpruneError("--batch-size must be at least 1")
    shape = parse_shape(input_shape) if input_shape else None
    example = None
    if spec.startswith("torchvision:"):
        name = spec.split(":", 1)[1]
        model, source = _torchvision(name), {"kind": "torchvision", "name": name}
        shape = shape or (3, 224, 224)
    elif spec.startswith("example:"):
        name = spec.split(":", 1)[1]
        ex = get_example(name)
        model, source = trained_example(name, progress), {"kind": "example", "name": name}
        shape = shape or get_dataset(ex.data).sample_shape
    elif Path(spec).is_dir():
        saved = read_spec(spec)
        model, source = load_saved(spec), saved["source"]
        shape = shape or (tuple(saved["input_shape"]) if saved.get("input_shape") else None)
    elif ".py:" in spec:
        path, fn = spec.rsplit(":", 1)
        model, example = _from_file(path, fn)
        source = {"kind": "file", "path": str(Path(path).resolve()), "function": fn}
    else:
        raise HwpruneError(f"cannot understand model spec '{spec}'; use {SPEC_HELP}")

    if shape is not None:
        example = torch.randn((batch_size, *shape))
    elif example is None:
        raise HwpruneError(f"{spec}: no example inputs; pass --input-shape (per sample, e.g. 3x224x224)")
    elif isinstance(example, torch.Tensor) and example.shape[0] != batch_size:
        example = example[:1].expand(batch_size, *example.shape[1:]).contiguous()
    model.eval()
    try:
        with torch.no_grad():
            call(model, example)
    except Exception as e:
        got = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HwpruneError(f"input of shape {got} does not fit {spec}: {msg[:200]}") from None
    return ResolvedModel(model, example, source, spec)
