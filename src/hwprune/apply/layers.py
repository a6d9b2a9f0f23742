"""Whole decoder layers of a transformers language model, scored and deleted (depth pruning).

ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect")
scores decoder layer i by its block influence BI_i = 1 - E_tokens[cos(h_i, h_{i+1})], the cosine between the
hidden state a layer receives and the one it returns, averaged over calibration tokens: a layer that barely
turns the residual stream changes little when it goes, and the lowest-BI layers are removed.

Removal is physical: the layer leaves the model's `ModuleList`, the config's `num_hidden_layers` (and
`layer_types`, where the config has one) follow, and every remaining attention's `layer_idx` is renumbered, so
that a KV cache (`generate`, `past_key_values`) indexes the layers that are left. A model with the same widths
in every layer then saves with `save_pretrained` and reloads with plain `from_pretrained`.

This is not `hwprune.apply.blocks` (`--granularity block`): that replaces a residual block called with one
tensor by `nn.Identity` and finds blocks by tracing their forward with fx. A transformers decoder layer takes
keyword arguments (the mask, position embeddings, the cache) that fx does not trace, and an `nn.Identity` left
in its list would keep the layer in the config and in the cache's indexing, so `from_pretrained` would rebuild
the layer (with the identity's missing weights) and the cache would keep a slot per removed layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from hwprune.apply.sequential import find_blocks
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call, eval_mode, is_transformers_model
from hwprune.core.registry import Registry

LayerScorer = Callable[[nn.Module, list, dict], list[float]]
#: Criteria for whole decoder layers (`--granularity layer --criterion NAME`): higher = keep.
LAYER_CRITERIA: Registry[LayerScorer] = Registry("layer criterion", "--criterion")
DEFAULT_LAYER_CRITERION = "block-influence"


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, list) of a transformers decoder's layers: the list of blocks with Linear layers whose length is
    the config's `num_hidden_layers` (`model.layers` of a Llama, Qwen, Mistral, ...)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    try:
        name, layers = find_blocks(model) if is_transformers_model(model) and isinstance(n, int) else ("", None)
    except HwpruneError:
        layers = None
    if layers is None or len(layers) != n:
        raise HwpruneError(
            f"{type(model).__name__} has no decoder layers to remove (a transformers model whose config's "
            "num_hidden_layers counts a list of layers); for residual blocks use --granularity block"
        )
    return name, layers


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _token_mask(x) -> torch.Tensor | None:
    """The batch's attention_mask (1 = a real token), when it has one: padding is left out of token means."""
    mask = x.get("attention_mask") if isinstance(x, dict) else None
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def block_influence(model: nn.Module, batches: Iterable) -> list[float]:
    """ShortGPT's BI_i = 1 - mean over calibration tokens of cos(layer i's input, its output), per decoder layer
    (Men et al. 2024, eq. 1). `batches`: model inputs (e.g. {"input_ids": ...}); padded tokens do not count."""
    _, layers = find_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    counts = torch.zeros(len(layers), dtype=torch.float64)
    state: dict = {"mask": None}
    inputs: dict[int, torch.Tensor] = {}

    def pre(i):
        def hook(mod, args, kwargs):
            inputs[i] = _hidden(args, kwargs).detach()

        return hook

    def post(i):
        def hook(mod, args, kwargs, out):
            h_in, h_out = inputs.pop(i), _output(out).detach()
            cos = torch.nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)  # (batch, tokens)
            w = state["mask"]
            w = torch.ones_like(cos) if w is None or w.shape != cos.shape else w.to(cos)
            sums[i] += float((cos * w).sum())
            counts[i] += float(w.sum())

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post(i), with_kwargs=True))
    try:
        with eval_mode(model), torch.no_grad():
            for x in batches:
                state["mask"] = _token_mask(x)
                call(model, x)
    finally:
        for h in handles:
            h.remove()
    if not bool((counts > 0).all()):
        raise HwpruneError("block influence needs calibration text that reaches every decoder layer")
    return (1 - sums / counts).tolist()


def register_layer_criterion(name: str, description: str):
    """Decorator: a decoder-layer criterion `(model, batches, ctx) -> one score per layer` (higher = keep)."""

    def wrap(fn: LayerScorer) -> LayerScorer:
        return LAYER_CRITERIA.register(name, fn, description)

    return wrap


@register_layer_criterion(
    "block-influence",
    "ShortGPT's block influence 1 - cos(layer input, layer output) over calibration tokens (Men et al. 2024)",
)
def _bi(model, batches, ctx):
    if not batches:
        raise HwpruneError("--criterion block-influence needs calibration text: pass --data (data=...)")
    return block_influence(model, batches)


@register_layer_criterion("random", "one uniform random score per decoder layer (a baseline)")
def _random_layers(model, batches, ctx):
    _, layers = find_layers(model)
    return torch.rand(len(layers), generator=ctx["generator"], dtype=torch.float64).tolist()


def score_layers(model: nn.Module, criterion: str, batches: list, seed: int = 0) -> tuple[list[str], list[float]]:
    """(names, scores) of the decoder layers under a layer criterion (higher = more important)."""
    fn = LAYER_CRITERIA.get(criterion)
    name, layers = find_layers(model)
    scores = fn(model, list(batches), {"generator": torch.Generator().manual_seed(seed)})
    return [f"{name}.{i}" for i in range(len(layers))], [float(s) for s in scores]


def remove_layers(model: nn.Module, drop: Iterable[int]) -> nn.Module:
    """Delete decoder layers `drop` (indices) in place: the list, the config and every `layer_idx` follow."""
    name, layers = find_layers(model)
    gone = set(drop)
    if any(not 0 <= i < len(layers) for i in gone):
        raise HwpruneError(f"layer indices {sorted(gone)}: the model has {len(layers)} decoder layers")
    kept = [i for i in range(len(layers)) if i not in gone]
    if not kept:
        raise HwpruneError("removing every decoder layer leaves no model: lower --sparsity")
    new = nn.ModuleList([layers[i] for i in kept])
    for j, layer in enumerate(new):
        for m in layer.modules():  # the attention (and any module) that indexes the KV cache by its layer
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = j
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    config = model.config
    types = getattr(config, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == len(layers):
        config.layer_types = [types[i] for i in kept]
    config.num_hidden_layers = len(kept)
    return model
