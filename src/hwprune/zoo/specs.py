"""Model specs (`--model SPEC`): torchvision:NAME, timm:NAME, example:NAME, path/file.py:function, or a saved
dir."""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call
from hwprune.export.model import load, read_spec
from hwprune.export.spec import runnable_source, source_file
from hwprune.zoo import hf, text
from hwprune.zoo.datasets import get_dataset
from hwprune.zoo.examples import get_example, trained_example

SPEC_HELP = (
    "torchvision:NAME, timm:NAME, hf:DIR (a transformers save_pretrained directory), hf-config:FILE (random "
    "weights), example:NAME, path/to/file.py:function, or a directory saved by hwprune"
)


@dataclass
class ResolvedModel:
    model: nn.Module
    example_inputs: object  # a tensor (batch first), or a tuple/dict of them
    source: dict  # how to rebuild the architecture (stored in saved specs)
    spec: str
    tokenizer: object = None  # a text model's tokenizer (hf: directories, text examples)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _torchvision(name: str) -> nn.Module:
    if not name:
        raise HwpruneError("torchvision: needs a model name, e.g. torchvision:resnet18")
    import torchvision  # noqa: PLC0415  (slow to import; only torchvision: specs need it)

    names = torchvision.models.list_models()
    if name not in names:
        close = [n for n in names if name.lower()[:4] in n][:6]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise HwpruneError(f"unknown torchvision model {name!r}{hint}")
    kwargs = {"weights": None}
    builder = torchvision.models.get_model_builder(name)
    if "weights_backbone" in inspect.signature(builder).parameters:
        # Segmentation and detection builders otherwise download ImageNet backbone weights (no network here).
        kwargs["weights_backbone"] = None
    return builder(**kwargs)


def _timm(name: str) -> nn.Module:
    if not name:
        raise HwpruneError("timm: needs a model name, e.g. timm:resnet50")
    try:
        import timm  # noqa: PLC0415  (optional dependency: pip install 'hwprune[timm]')
    except ModuleNotFoundError:
        raise HwpruneError("timm: models need the timm package: pip install timm") from None
    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:5]}*")[:6]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise HwpruneError(f"unknown timm model {name!r}{hint}")
    return timm.create_model(name, pretrained=False)


def _import_file(path: str | Path, what: str = "model"):
    p = Path(path)
    if not p.is_file():
        raise HwpruneError(f"{what} file {path} not found")
    mod_spec = importlib.util.spec_from_file_location(f"hwprune_user_{p.stem}", p)
    if mod_spec is None or mod_spec.loader is None:
        raise HwpruneError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: SyntaxError, ImportError, anything its top level raises
        raise HwpruneError(f"cannot import {path}: {type(e).__name__}: {_first_line(e)}") from e
    return module


def file_function(spec: str, what: str):
    """The function `fn` of a `path/to/file.py:fn` spec given for `what` (--data, --loss, ...): imports and runs
    the user's file, as `--model file.py:fn` does."""
    path, _, fn = spec.rpartition(":")
    if not path.endswith(".py") or not fn:
        raise HwpruneError(f"{what} {spec!r} must look like path/to/file.py:function")
    f = getattr(_import_file(path, what), fn, None)
    if not callable(f):
        raise HwpruneError(f"{path} has no function '{fn}' (for {what})")
    return f


def _from_file(path: str | Path, fn: str):
    """(model, example inputs or None) from calling `fn()` in the user's file: imports and runs it."""
    module = _import_file(path)
    factory = getattr(module, fn, None)
    if factory is None:
        raise HwpruneError(f"{path} has no function '{fn}'")
    if not callable(factory):
        what = type(factory).__name__
        raise HwpruneError(f"{path}:{fn} is not callable ({what}); name a function that returns a model")
    try:
        out = factory()
    except Exception as e:
        raise HwpruneError(f"{path}:{fn}() raised {type(e).__name__}: {_first_line(e)}") from e
    if isinstance(out, nn.Module):
        return out, None
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module):
        return out
    raise HwpruneError(
        f"{path}:{fn} must return an nn.Module or (nn.Module, example_inputs), it returned {type(out).__name__}"
    )


def _saved_file(source: dict, directory, trust_code: bool) -> nn.Module:
    where = directory if directory is not None else "the saved model"
    fn = source.get("function")
    if not isinstance(fn, str) or not fn:
        raise HwpruneError(f"{where}/spec.json: the file source names no function")
    if not trust_code:
        raise HwpruneError(
            f"{where} was saved from {source.get('file') or source.get('origin') or source.get('path')}:{fn}, and "
            "rebuilding it would run that file: pass the dense architecture (hwprune.load(dir, model=...)), "
            "or trust_code=True (CLI: --trust-code) if you trust this directory"
        )
    if "file" not in source and "path" not in source:
        raise HwpruneError(f"{where}: its source file was not stored; pass the dense architecture (model=...)")
    return _from_file(source_file(source, Path(directory or ".")), fn)[0]


def build_source(source: dict, directory=None, trust_code: bool = False) -> nn.Module:
    """Build the (dense, untrained) architecture a saved spec names.

    A `file` source is the user's code: it is imported (from the .py stored in `directory`) only with
    `trust_code=True`, since a saved directory may come from anyone.
    """
    kind = source.get("kind")
    if kind == "torchvision":
        return _torchvision(str(source.get("name", "")))
    if kind == "timm":
        return _timm(str(source.get("name", "")))
    if kind == "example":
        return get_example(str(source.get("name", ""))).build()
    if kind == "hf":
        return hf.build_from_source(source)
    if kind == "file":
        return _saved_file(source, directory, trust_code)
    if kind == "object":
        raise HwpruneError(
            f"this model was saved from a Python object of class {source.get('class')}: rebuild it with "
            "hwprune.load(directory, model=<a dense instance of that class>)"
        )
    raise HwpruneError(f"saved model has an unknown source {source!r}")


def load_saved(directory, model: nn.Module | None = None, trust_code: bool = False) -> nn.Module:
    """A saved model. Its dense architecture is `model` when given, else built from the recorded source;
    a source that is the user's .py is imported only with `trust_code=True`."""
    return load(directory, model, builder=lambda source: build_source(source, directory, trust_code))


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(t) for t in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise HwpruneError(f"--input-shape '{text}' must look like 3x224x224 (per sample, no batch)") from None
    if not shape or min(shape) < 1:
        raise HwpruneError(f"--input-shape '{text}' must be positive integers like 3x224x224")
    return shape


def _parse_file_spec(spec: str) -> tuple[str, str]:
    path, _, fn = spec.rpartition(":")
    if not path or not fn:
        raise HwpruneError(f"model spec '{spec}' needs both a file and a function: path/to/file.py:function")
    return path, fn


def _hf(spec: str, shape, batch_size: int, seq_len: int | None):
    kind, _, where = spec.partition(":")
    if not where:
        raise HwpruneError(f"{kind}: needs a path, e.g. {kind}:{'path/to/model' if kind == 'hf' else 'config.json'}")
    if kind == "hf":
        model, tokenizer = hf.from_directory(where)
    else:
        model, tokenizer = hf.from_config(hf.read_config_file(where)), None
    if hf.is_text(model):
        example = hf.text_inputs(model, batch_size, seq_len, tokenizer)
        return model, hf.hf_source(model), None, example, tokenizer
    return model, hf.hf_source(model), shape or hf.vision_shape(model), None, tokenizer


def _build(spec: str, shape, trust_code: bool, progress: bool):
    """(model, source, per-sample shape or None, example inputs or None) for a model SPEC."""
    if spec.startswith("torchvision:"):
        name = spec.split(":", 1)[1]
        return _torchvision(name), {"kind": "torchvision", "name": name}, shape or (3, 224, 224), None
    if spec.startswith("timm:"):
        name = spec.split(":", 1)[1]
        model = _timm(name)
        default = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
        return model, {"kind": "timm", "name": name}, shape or default, None
    if spec.startswith("example:"):
        name = spec.split(":", 1)[1]
        ex = get_example(name)
        model = trained_example(name, progress)
        return model, {"kind": "example", "name": name}, shape or get_dataset(ex.data).sample_shape, None
    if Path(spec).is_dir():
        saved = read_spec(spec)
        model = load_saved(spec, trust_code=trust_code)
        shape = shape or (tuple(saved["input_shape"]) if saved.get("input_shape") else None)
        return model, runnable_source(saved["source"], Path(spec)), shape, None
    if ".py:" in spec or spec.startswith(":"):
        path, fn = _parse_file_spec(spec)
        model, example = _from_file(path, fn)
        return model, {"kind": "file", "path": str(Path(path).resolve()), "function": fn}, shape, example
    if spec.endswith(".py"):
        raise HwpruneError(f"model spec '{spec}' names no function: use {spec}:FUNCTION (it returns the model)")
    raise HwpruneError(f"cannot understand model spec {spec!r}; use {SPEC_HELP}")


def resolve(
    spec: str,
    batch_size: int = 1,
    input_shape: str | None = None,
    progress: bool = True,
    trust_code: bool = False,
    seq_len: int | None = None,
) -> ResolvedModel:
    """Turn a model SPEC into a model and example inputs of the requested batch size; check they fit with
    one forward pass at that batch size (a model that only works at batch 1 fails here, not mid-run).

    A saved directory whose architecture is the user's .py is rebuilt only with `trust_code=True`.
    """
    if batch_size < 1:
        raise HwpruneError("--batch-size must be at least 1")
    shape = parse_shape(input_shape) if input_shape else None
    tokenizer = None
    if spec.startswith(("hf:", "hf-config:")):
        model, source, shape, example, tokenizer = _hf(spec, shape, batch_size, seq_len)
    elif spec.startswith("example:") and get_example(spec.split(":", 1)[1]).pretrained_text:
        name = spec.split(":", 1)[1]
        model, tokenizer = get_example(name).build(), text.minilm_tokenizer()
        example = hf.text_inputs(model.encoder, batch_size, seq_len, tokenizer)
        source = {"kind": "example", "name": name}
    elif spec.startswith("example:") and get_example(spec.split(":", 1)[1]).prompt is not None:
        name = spec.split(":", 1)[1]
        ex = get_example(name)  # a language model trained here: its example inputs are a held-out prompt
        model, example = trained_example(name, progress), ex.prompt(batch_size, seq_len)
        tokenizer = ex.tokenizer() if ex.tokenizer is not None else None
        source = {"kind": "example", "name": name}
    else:
        model, source, shape, example = _build(spec, shape, trust_code, progress)
    text_model = model if hf.is_text(model) else getattr(model, "encoder", None)
    if shape is None and example is None and text_model is not None and hf.is_text(text_model):
        example = hf.text_inputs(text_model, batch_size, seq_len, tokenizer)  # a saved text model's directory
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
        raise HwpruneError(
            f"input of shape {got} (batch size {batch_size}) does not fit {spec}: {_first_line(e)}"
        ) from None
    return ResolvedModel(model, example, source, spec, tokenizer)
