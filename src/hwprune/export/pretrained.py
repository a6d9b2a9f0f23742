"""A pruned transformers model as a plain `save_pretrained` directory: its config rewritten to the new widths,
so that `from_pretrained` in an environment without hwprune rebuilds it exactly.

A transformers config holds one width per kind (heads, KV heads, FFN, hidden), so only plans with the same
widths in every layer can be written this way; any other plan is refused in one line naming the widths that
differ (such models save and load through `hwprune.save` / `hwprune.load`). After rewriting, the config is
checked by building the class from it (on the meta device) and comparing every parameter's shape with the
pruned model's: a config that does not rebuild the model is never written.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.files import atomic_directory
from hwprune.export.model import refuse_existing
from hwprune.groups.attention import find_attention


def is_transformers(model: nn.Module) -> bool:
    return hasattr(model, "save_pretrained") and hasattr(model, "config") and hasattr(model.config, "to_dict")


def _one(values: set, what: str) -> int | None:
    if len(values) > 1:
        raise HwpruneError(
            f"the pruned layers have different {what} ({', '.join(map(str, sorted(values)))}), which one "
            "transformers config cannot hold: save with hwprune.save and load with hwprune.load, or prune with "
            "the uniform allocator (--allocator uniform) for a plain save_pretrained directory"
        )
    return next(iter(values), None)


def _dense_twin(model: nn.Module, config) -> nn.Module:
    with torch.device("meta"):
        return type(model)(config)


def _widths_of(model: nn.Module, dense: nn.Module, size: int) -> set[int]:
    """Current out-features of the Linears that are `size` wide (out) in the dense build. Matched by the dense
    width alone: a model whose vocabulary or head count equals its FFN width would be misread (and then
    refused by `check_rebuilds`, never written wrong)."""
    have = dict(model.named_modules())
    return {
        have[n].out_features
        for n, m in dense.named_modules()
        if isinstance(m, nn.Linear) and m.out_features == size and isinstance(have.get(n), nn.Linear)
    }


def pruned_config(model: nn.Module):
    """The model's config with its head counts, head size, FFN and hidden widths set to the pruned ones."""
    config = copy.deepcopy(model.config)
    dense = _dense_twin(model, model.config)
    attention = list(find_attention(model).values())
    modules = dict(model.named_modules())
    if attention:
        q = {modules[a.q].out_features // a.head_dim for a in attention}
        kv = {modules[a.k].out_features // a.head_dim for a in attention}
        config.head_dim = _one({a.head_dim for a in attention}, "head sizes")
        config.num_attention_heads = _one(q, "head counts")
        if hasattr(config, "num_key_value_heads"):
            config.num_key_value_heads = _one(kv, "key/value head counts")
    ffn = getattr(config, "intermediate_size", None)
    if isinstance(ffn, int):
        config.intermediate_size = _one(_widths_of(model, dense, ffn), "FFN widths") or ffn
    hidden = getattr(config, "hidden_size", None)
    norms = {
        m.weight.shape[0]
        for m in model.modules()
        if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None
    }
    if isinstance(hidden, int) and norms and hidden not in norms:
        config.hidden_size = _one(norms, "hidden widths")
    return config


def check_rebuilds(model: nn.Module, config) -> None:
    """Building the model's class from `config` gives every parameter the pruned model's shape."""
    try:
        validate = getattr(config, "validate", None)  # transformers 5's own checks (Llama: hidden % heads == 0)
        if callable(validate):
            validate()
        twin = _dense_twin(model, config)
    except Exception as e:  # transformers raises ValueError or its strict-dataclass validation errors
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
        raise HwpruneError(
            f"transformers refuses the pruned {config.model_type} config ({first}): save with hwprune.save and "
            "load with hwprune.load, or keep the hidden size (--ignore with the embedding's name)"
        ) from None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, v in twin.state_dict().items():
        if k in want and tuple(v.shape) != want[k]:
            raise HwpruneError(
                f"a {config.model_type} config cannot express this pruned model ({k}: config builds "
                f"{tuple(v.shape)}, pruned is {want[k]}): save with hwprune.save and load with hwprune.load"
            )


def _write(model: nn.Module, config, directory: Path) -> None:
    original = model.config
    model.config = config
    try:
        model.save_pretrained(str(directory))
    finally:
        model.config = original


def _checked_config(model: nn.Module):
    if not is_transformers(model):
        raise HwpruneError(f"save_pretrained needs a transformers model, got {type(model).__name__}")
    config = pruned_config(model)
    check_rebuilds(model, config)
    return config


def write_pretrained(model: nn.Module, directory: Path) -> None:
    """`model.save_pretrained(directory)` with the pruned widths in its config (checked to rebuild it first)."""
    _write(model, _checked_config(model), directory)


def save_pretrained(model: nn.Module, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `model` (a pruned transformers model) with `save_pretrained`, its config set to the pruned
    widths; the directory loads with plain `<Class>.from_pretrained`. Written whole or not at all."""
    config = _checked_config(model)  # refuses per-layer widths before anything is written
    refuse_existing(directory, overwrite)
    with atomic_directory(directory) as tmp:
        _write(model, config, tmp)
    return Path(directory)
