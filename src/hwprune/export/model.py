"""Stage 8: save a (pruned) model as a JSON shape spec + safetensors weights, and rebuild it. No pickle.

The spec names how to build the original architecture (`source`, the model SPEC the user gave) and the
narrowed shape attributes of every module; loading builds the original, narrows the modules to the
saved shapes (as timm does for its `_pruned` configs) and loads the weights strictly.

Why not a `torch.export` program next to the weights, which would rebuild the graph with no source code:
`torch.export.load` unpickles (its docs: "uses pickle under the hood ... Never load data from an untrusted
source"; torch 2.14's pt2 archive reader calls `torch.load(weights_only=False)` and `pickle.loads`), so a
saved directory could run code on load; and it gives back a GraphModule, not the user's classes with
their attributes. The architecture therefore comes from the caller (`model=`), a built-in source
(torchvision, examples), or the .py stored in the directory, imported only with `trust_code=True`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from hwprune.apply.heads import HeadPrunedAttention
from hwprune.apply.layers import find_layers, remove_layers
from hwprune.core.errors import HwpruneError
from hwprune.core.files import atomic_directory
from hwprune.export.sparse import read_sparse, restore_masks, split_sparse
from hwprune.export.spec import FORMAT, read_spec, stored_source

SHAPE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "normalized_shape",
    "num_parameters",
    "embed_dim",
    "num_heads",
    "head_dim",
)


def _shape_spec(model: nn.Module) -> dict:
    spec = {}
    for name, m in model.named_modules():
        attrs = {a: getattr(m, a) for a in SHAPE_ATTRS if isinstance(getattr(m, a, None), (int, tuple, list))}
        if attrs:
            spec[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}
    return spec


def _replaced_spec(model: nn.Module) -> dict[str, str]:
    """Module path -> kind, for modules that pruning may have put in place of the source's own: removed
    blocks (nn.Identity) and classes that name a `hwprune_replacement` kind (head-pruned attention).

    Every nn.Identity is listed, also one the source already had: replacing it on load changes nothing.
    """
    out: dict[str, str] = {}
    for name, m in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in out):
            continue
        kind = "identity" if isinstance(m, nn.Identity) else getattr(m, "hwprune_replacement", None)
        if isinstance(kind, str):
            out[name] = kind
    return out


def _replacement(kind: str, original: nn.Module) -> nn.Module:
    if kind == "identity":
        return nn.Identity()
    if kind == "attention-heads":
        return HeadPrunedAttention.from_module(original)
    raise HwpruneError(f"saved model replaces a module by unknown kind {kind!r}; is this hwprune too old?")


def _replace_modules(model: nn.Module, replaced: dict[str, str]) -> None:
    """Put the recorded replacements in the freshly built source (before narrowing shapes)."""
    for name, kind in sorted(replaced.items(), key=lambda kv: kv[0].count(".")):
        try:
            original = model.get_submodule(name)
        except AttributeError:
            raise HwpruneError(f"saved model replaces module '{name}' that its source architecture lacks") from None
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, _replacement(kind, original))


def write_model(model: nn.Module, directory: Path, source: dict, extra: dict | None = None) -> None:
    """Write spec.json and model.safetensors (and a `file` source's .py) into an existing directory."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    sparse = split_sparse(model, state, directory)  # masked weights go compressed to sparse.safetensors
    save_file(state, str(directory / "model.safetensors"))
    stored = stored_source(source, directory)  # a `file` source's .py is copied in: the directory moves whole
    spec = {"format": FORMAT, "source": stored, "modules": _shape_spec(model), **(extra or {})}
    if sparse:
        spec["sparse"] = sparse
    replaced = _replaced_spec(model)  # removed blocks, head-pruned attention; older specs lack the key
    if replaced:
        spec["replaced"] = replaced
    (directory / "spec.json").write_text(json.dumps(spec, indent=1))


def object_source(model: nn.Module) -> dict:
    """The source of a model passed in as an object: its class, so that a load can name what to pass."""
    cls = type(model)
    return {"kind": "object", "class": f"{cls.__module__}.{cls.__qualname__}"}


def refuse_existing(directory: str | Path, overwrite: bool) -> None:
    """Saving never destroys what the user did not ask to replace: a file, or a directory with anything in it,
    stays unless `overwrite=True`."""
    p = Path(directory)
    if overwrite or not p.exists() or (p.is_dir() and not any(p.iterdir())):
        return
    what = "a file" if not p.is_dir() else "a directory that is not empty"
    raise HwpruneError(f"{p} is {what}; choose another path, or pass overwrite=True to replace it")


def save_model(
    model: nn.Module,
    directory: str | Path,
    source: dict | None = None,
    extra: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `directory/spec.json` and `directory/model.safetensors` atomically.

    `source` says how to rebuild the dense architecture (`{"kind": "torchvision", "name": "resnet18"}`, or
    `{"kind": "file", "path": ..., "function": ...}`, whose .py is copied into the directory); without it
    the model's class is recorded and loading needs the dense architecture passed in. An existing
    non-empty `directory` is replaced only with `overwrite=True`.
    """
    refuse_existing(directory, overwrite)
    source = source or object_source(model)
    with atomic_directory(directory) as tmp:
        write_model(model, tmp, source, extra)
    return Path(directory)


def _cut_layers(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A transformers decoder saved after depth pruning (`hwprune.apply.layers`) has fewer layers than its source
    builds, renumbered 0..n-1: the source's list is cut to its first n (config and layer_idx follow). Which layers
    were kept is not recorded, so a config whose layers differ in kind (`layer_types`) is refused."""
    try:
        name, layers = find_layers(model)
    except HwpruneError:
        return
    n = sum(any(k.startswith(f"{name}.{i}.") for k in state) for i in range(len(layers)))
    if not 0 < n < len(layers):
        return
    if len(set(getattr(model.config, "layer_types", None) or [])) > 1:
        raise HwpruneError(
            f"saved model keeps {n} of {len(layers)} decoder layers of different kinds (layer_types) and does not "
            "say which: load its pretrained/ directory with transformers from_pretrained"
        )
    remove_layers(model, range(n, len(layers)))


def _narrow(model: nn.Module, spec: dict, state: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    for name, attrs in spec["modules"].items():
        m = modules.get(name)
        if m is None:
            raise HwpruneError(f"saved model has module '{name}' that its source architecture lacks")
        for k, v in attrs.items():
            setattr(m, k, tuple(v) if isinstance(v, list) else v)
    for key, tensor in state.items():
        mod_name, _, pname = key.rpartition(".")
        m = modules.get(mod_name)
        if m is None:
            continue
        if pname in m._parameters and m._parameters[pname] is not None:
            if m._parameters[pname].shape != tensor.shape:
                m._parameters[pname] = nn.Parameter(torch.empty_like(tensor), m._parameters[pname].requires_grad)
        elif m._buffers.get(pname) is not None and m._buffers[pname].shape != tensor.shape:
            m._buffers[pname] = torch.empty_like(tensor)


def load(
    directory: str | Path, model: nn.Module | None = None, builder: Callable[[dict], nn.Module] | None = None
) -> nn.Module:
    """Rebuild a model saved by `save_model` (or by `hwprune prune`'s `model/` output).

    The dense architecture comes from `model` (an instance of the class that was pruned, e.g. `MyNet()`;
    narrowed in place) or from `builder(spec["source"])`; its modules are narrowed to the saved shapes and
    the weights loaded strictly. Nothing in the directory is executed here (safetensors and JSON only);
    `builder` decides whether a recorded source may be built.
    """
    directory = Path(directory)
    spec = read_spec(directory)
    try:
        state = load_file(str(directory / "model.safetensors"))
    except Exception as e:  # safetensors raises several types on a damaged file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        path = directory / "model.safetensors"
        raise HwpruneError(f"cannot read weights {path} (damaged or cut short?): {first}") from e
    masks = {}
    if spec.get("sparse"):  # masked weights saved compressed (sparse_io); older specs lack the key
        weights, masks = read_sparse(directory, spec["sparse"])
        state.update(weights)
    if model is not None and not isinstance(model, nn.Module):
        raise HwpruneError(f"model= must be a dense torch.nn.Module to narrow, got {type(model).__name__}")
    if model is None:
        if builder is None:
            raise HwpruneError(f"{directory}: pass the dense architecture to rebuild it (load(dir, model=...))")
        model = builder(spec["source"])
    _replace_modules(model, spec.get("replaced", {}))
    _cut_layers(model, state)
    _narrow(model, spec, state)
    # safetensors keeps tensors only; modules that check their state-dict version on load (torchvision's
    # MNASNet raises without one) get the versions of the architecture they are loaded into.
    state = OrderedDict(state)
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HwpruneError(f"weights in {directory} do not fit the saved shapes: {str(e).splitlines()[0]}") from e
    if masks:
        restore_masks(model, masks, spec["sparse"])
    model.eval()
    return model
