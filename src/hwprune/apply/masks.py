"""Weight-level sparsity patterns and masks (unstructured, N:M, block), kept through fine-tuning.

Structured pruning (`hwprune.apply.channels`) removes whole channels; this module zeroes individual
weights and keeps the shapes. A mask is a bool tensor shaped like a layer's weight, True = kept. Masks
are chosen from per-weight scores (`hwprune.importance.weight_scores`), applied in place, and kept
during fine-tuning by two hooks on each masked layer (see `apply_masks`). Patterns, in the 2-D view of
a weight (out_features x in_flat, where in_flat = in_channels/groups * kernel for a conv):

- unstructured: any weights, the lowest-scoring fraction `sparsity` of them;
- N:M: in each group of M consecutive weights of a row (along the input dimension, as NVIDIA's 2:4
  sparse tensor cores read them, Mishra et al. 2021) the N highest-scoring are kept;
- block RxC: R x C tiles of the 2-D view are kept or removed whole (a block's score is the sum of its
  elements' scores).

Schedules that mask while fine-tuning are in `hwprune.finetune.weights`; PyTorch's 2:4 kernels in
`hwprune.apply.semistructured`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import run_hooked

PATTERN_FORMS = "unstructured, N:M (e.g. 2:4, 4:8) or blockRxC (e.g. block4x1, block8x8)"
SCOPES = ("layer", "global")


# ----------------------------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern. `kind` is "unstructured", "nm" (n of every m kept) or "block" (rows x cols)."""

    kind: str
    n: int = 0
    m: int = 0
    rows: int = 1
    cols: int = 1

    @property
    def text(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block{self.rows}x{self.cols}"
        return "unstructured"

    @property
    def implied_sparsity(self) -> float | None:
        """N:M fixes the sparsity (1 - N/M); the others take it as an argument."""
        return 1 - self.n / self.m if self.kind == "nm" else None

    def label(self, sparsity: float) -> str:
        """What a masked module's `hwprune_sparsity` says: "2:4", "unstructured:0.9", "block4x1:0.75"."""
        if self.kind == "nm":
            return self.text
        return f"{self.text}:{round(sparsity, 4):g}"


def parse_pattern(text: str | Pattern) -> Pattern:
    """Parse "unstructured", "N:M" (0 < N < M) or "blockRxC" (R, C >= 1)."""
    if isinstance(text, Pattern):
        return text
    t = str(text).strip().lower()
    if t == "unstructured":
        return Pattern("unstructured")
    if mt := re.fullmatch(r"(\d+)\s*:\s*(\d+)", t):
        n, m = int(mt[1]), int(mt[2])
        if not 0 < n < m:
            raise HwpruneError(f"sparsity pattern '{text}': N:M needs 0 < N < M (e.g. 2:4); accepted: {PATTERN_FORMS}")
        return Pattern("nm", n=n, m=m)
    if mt := re.fullmatch(r"block\s*(\d+)\s*x\s*(\d+)", t):
        r, c = int(mt[1]), int(mt[2])
        if r < 1 or c < 1:
            raise HwpruneError(f"sparsity pattern '{text}': block sides must be at least 1; accepted: {PATTERN_FORMS}")
        return Pattern("block", rows=r, cols=c)
    raise HwpruneError(f"unknown sparsity pattern '{text}'; accepted: {PATTERN_FORMS}")


def resolve_sparsity(pattern: Pattern, sparsity: float | None) -> float:
    """The fraction of weights removed: implied by N:M (a different `sparsity` is an error), else `sparsity`,
    which must be in [0, 1)."""
    implied = pattern.implied_sparsity
    if implied is not None:
        if sparsity is not None and abs(sparsity - implied) > 1e-6:
            raise HwpruneError(
                f"pattern {pattern.text} fixes sparsity at {implied:g}; leave --sparsity out or set it to {implied:g}"
            )
        return implied
    if sparsity is None:
        raise HwpruneError(f"pattern {pattern.text} needs a sparsity (the fraction of weights removed, in [0, 1))")
    if not 0 <= sparsity < 1:
        raise HwpruneError(f"sparsity {sparsity} must be in [0, 1) (the fraction of weights removed)")
    return float(sparsity)


# ------------------------------------------------------------------------------------------------ layers


def is_maskable(module: nn.Module) -> bool:
    """Conv and Linear layers (transposed convs store (in, out) weights and are left out)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def weight_matrix(t: torch.Tensor) -> torch.Tensor:
    """The 2-D view out x in_flat of a Linear or conv weight (conv: in_channels/groups * kernel per row)."""
    return t.reshape(t.shape[0], -1)


def output_layer(model: nn.Module, example_inputs=None) -> str | None:
    """The Conv/Linear that runs last (found with forward hooks), or the last one registered without inputs."""
    names = {m: n for n, m in model.named_modules() if is_maskable(m)}
    if example_inputs is None:
        return list(names.values())[-1] if names else None
    order: list[str] = []
    run_hooked(model, example_inputs, list(names), lambda mod, a, o: order.append(names[mod]))
    return order[-1] if order else None


def prunable_layers(model: nn.Module, example_inputs=None, exclude: list[str] | None = None) -> list[str]:
    """Every Conv/Linear in model order, less `exclude` and the output layer.

    The classifier head stays dense by default: it is a small share of the weights (2,560 of ~1M in the
    MNIST-1D example), each of its weights feeds one logit directly so removing them costs the most
    accuracy per weight, and its out_features (the class count, e.g. 10) is rarely a multiple of the 8/16
    rows that sparse kernels need. Name it in `layers` to mask it anyway.
    """
    head = output_layer(model, example_inputs)
    skip = set(exclude or []) | {head}
    return [n for n, m in model.named_modules() if is_maskable(m) and n not in skip]


# ------------------------------------------------------------------------------------------------- masks


def _nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    s = weight_matrix(score)
    groups = s.reshape(s.shape[0], -1, m)
    # Stable descending sort: among equal scores the earlier weight is kept, so masks are deterministic.
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(score.shape)


def _block_scores(score: torch.Tensor, bh: int, bw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, element count) per block of the 2-D view; edge blocks are cut short by the weight's shape.

    A block's score is the sum of its elements' scores; an edge block's sum is scaled up to a full block
    (its mean times bh*bw) so that a cut-short block is not removed first merely for having fewer elements.
    """
    s = weight_matrix(score).double()
    r, c = s.shape
    rb, cb = math.ceil(r / bh), math.ceil(c / bw)
    pad = (0, cb * bw - c, 0, rb * bh - r)
    sums = nn.functional.pad(s, pad).reshape(rb, bh, cb, bw).sum((1, 3))
    counts = nn.functional.pad(torch.ones_like(s), pad).reshape(rb, bh, cb, bw).sum((1, 3))
    return sums / counts * (bh * bw), counts


def _expand_blocks(block_keep: torch.Tensor, bh: int, bw: int, shape: torch.Size) -> torch.Tensor:
    rows, cols = shape[0], math.prod(shape[1:])
    full = block_keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:rows, :cols]
    return full.reshape(shape)


def _remove_lowest(scores: torch.Tensor, sizes: torch.Tensor, budget: int) -> torch.Tensor:
    """Keep-mask over flat units: remove the lowest-scoring units while the elements removed stay <= budget.

    Units are weights (size 1: exactly `budget` removed) or blocks (sizes up to bh*bw).
    """
    order = torch.argsort(scores, stable=True)
    removed = torch.cumsum(sizes[order], 0) <= budget
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[order[removed]] = False
    return keep


def _maskable_weights(
    model: nn.Module, scores: dict[str, torch.Tensor], pat: Pattern, names: list[str], named: bool
) -> dict[str, torch.Tensor]:
    """Layer name -> weight of every layer in `names` that can take the pattern, checked against `scores`.

    A named layer (`named`) whose in_flat is not a multiple of M raises; a default one is left dense.
    """
    modules = dict(model.named_modules())
    weights: dict[str, torch.Tensor] = {}
    for name in names:
        mod = modules.get(name)
        if mod is None or not is_maskable(mod):
            raise HwpruneError(f"layer '{name}' is not a Conv/Linear module of the model")
        if name not in scores:
            raise HwpruneError(f"no weight scores for layer '{name}'; score it or leave it out of layers")
        if scores[name].shape != mod.weight.shape:
            raise HwpruneError(
                f"scores for '{name}' have shape {tuple(scores[name].shape)}, its weight {tuple(mod.weight.shape)}"
            )
        if pat.kind == "nm" and weight_matrix(mod.weight).shape[1] % pat.m:
            if named:
                raise HwpruneError(
                    f"layer '{name}' has {weight_matrix(mod.weight).shape[1]} inputs per row, not a multiple of "
                    f"{pat.m}; {pat.text} needs whole groups of {pat.m} (leave the layer out)"
                )
            continue
        weights[name] = mod.weight
    if not weights:
        raise HwpruneError(f"no layer can take pattern {pat.text}")
    return weights


def _keep_units(
    units: dict[str, torch.Tensor],
    sizes: dict[str, torch.Tensor],
    weights: dict[str, torch.Tensor],
    s: float,
    scope: str,
) -> dict[str, torch.Tensor]:
    """Keep-mask over each layer's flat units (weights or blocks), removing `s` of the weights per layer or
    over all layers together (`scope`)."""
    if scope == "layer":
        return {n: _remove_lowest(units[n], sizes[n], round(s * weights[n].numel())) for n in weights}
    total = sum(w.numel() for w in weights.values())
    flat = _remove_lowest(torch.cat(list(units.values())), torch.cat(list(sizes.values())), round(s * total))
    return dict(zip(weights, torch.split(flat, [u.numel() for u in units.values()]), strict=True))


def compute_masks(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    pattern: str | Pattern,
    sparsity: float | None = None,
    scope: str = "layer",
    layers: list[str] | None = None,
    example_inputs=None,
    exclude: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Bool masks (True = kept) shaped like each layer's weight, removing the lowest-scoring weights.

    Args:
        scores: module name -> per-weight score shaped like its weight (higher = more important), e.g.
            from `hwprune.importance.weight_scores`.
        pattern: "unstructured", "N:M" or "blockRxC" (see `parse_pattern`).
        sparsity: fraction of weights removed; implied by N:M (give None or 1 - N/M).
        scope: "layer" removes that fraction from every layer; "global" ranks all layers' weights (or
            blocks) together, comparing raw scores. N:M is always per group, so scope does not apply.
        layers: module names to mask; default every Conv/Linear but the output layer (see
            `prunable_layers`, which uses `example_inputs` and `exclude`). For N:M, default layers whose
            in_flat is not a multiple of M are left dense; named ones raise.

    Unstructured: exactly round(sparsity * n) weights are removed (per layer, or over all layers for
    global). Blocks: the lowest-scoring whole blocks while the elements removed stay <= that count.
    """
    pat = parse_pattern(pattern)
    s = resolve_sparsity(pat, sparsity)
    if scope not in SCOPES:
        raise HwpruneError(f"scope '{scope}' must be one of: {', '.join(SCOPES)}")
    names = list(layers) if layers is not None else prunable_layers(model, example_inputs, exclude)
    weights = _maskable_weights(model, scores, pat, names, layers is not None)

    score = {n: scores[n].detach().cpu() for n in weights}
    if pat.kind == "nm":
        return {n: _nm_mask(score[n], pat.n, pat.m) for n in weights}

    if pat.kind == "unstructured":
        units = {n: score[n].double().flatten() for n in weights}
        sizes = {n: torch.ones(score[n].numel(), dtype=torch.long) for n in weights}
    else:
        units, sizes = {}, {}
        for n in weights:
            bs, cnt = _block_scores(score[n], pat.rows, pat.cols)
            units[n], sizes[n] = bs.flatten(), cnt.flatten().long()
    keep = _keep_units(units, sizes, weights, s, scope)

    masks = {}
    for n, w in weights.items():
        if pat.kind == "unstructured":
            masks[n] = keep[n].reshape(w.shape)
        else:
            bs, _ = _block_scores(score[n], pat.rows, pat.cols)
            masks[n] = _expand_blocks(keep[n].reshape(bs.shape), pat.rows, pat.cols, w.shape)
    return masks


# ------------------------------------------------------------------------------- keeping masks in training


class _ReapplyMask:
    """Forward pre-hook: re-zero the pruned weights whenever the weight changed since they were last zeroed.

    An optimiser step bumps the weight's version counter; checking it costs nothing in inference, so a
    masked model is timed exactly like a dense one. Also re-arms the gradient hook on a copied module
    (deepcopy does not copy tensor hooks).
    """

    def __call__(self, module: nn.Module, args) -> None:
        w = module.weight
        if getattr(w, "_hwprune_grad_handle", None) is None:
            _hook_grad(module)
        if w._version != getattr(module, "_hwprune_version", None):
            _zero(module)


class _GradMask:
    """Weight-gradient hook: pruned weights get zero gradient, so an optimiser that starts with zero moments
    (Adam, AdamW, SGD with momentum) never moves them (Adam's update m / (sqrt(v) + eps) is 0 when m = 0)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(~self.module.hwprune_mask, 0)


def _hook_grad(module: nn.Module) -> None:
    w = module.weight
    if w.requires_grad:
        w._hwprune_grad_handle = w.register_hook(_GradMask(module))


def _zero(module: nn.Module) -> None:
    # masked_fill writes +0.0; multiplying by the mask would leave -0.0 where a weight was negative.
    with torch.no_grad():
        module.weight.masked_fill_(~module.hwprune_mask, 0)
    module._hwprune_version = module.weight._version


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor], pattern: str | Pattern = "unstructured") -> None:
    """Zero the pruned weights in place and keep them zero while the model is fine-tuned.

    Each masked module gets: a non-persistent buffer `hwprune_mask` (follows .to(device), not in the
    state dict), a gradient hook that zeroes the pruned weights' gradients, a forward pre-hook that
    re-zeroes them after any in-place change of the weight (an optimiser step), and `hwprune_sparsity`,
    e.g. "2:4" or "unstructured:0.9" (the layer's own fraction), which simulated targets read. Applying
    again replaces the mask. `remove_masks` undoes all of it but the zeros.
    """
    pat = parse_pattern(pattern)
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        mod = modules.get(name)
        if mod is None or not is_maskable(mod):
            raise HwpruneError(f"mask for '{name}', which is not a Conv/Linear module of the model")
        if mask.shape != mod.weight.shape:
            raise HwpruneError(f"mask for '{name}' has shape {tuple(mask.shape)}, its weight {tuple(mod.weight.shape)}")
        mask = mask.to(device=mod.weight.device, dtype=torch.bool)
        if "hwprune_mask" in mod._buffers:
            mod.hwprune_mask = mask
        else:
            mod.register_buffer("hwprune_mask", mask, persistent=False)
            mod.register_forward_pre_hook(_ReapplyMask())
        if getattr(mod.weight, "_hwprune_grad_handle", None) is None:
            _hook_grad(mod)
        mod.hwprune_sparsity = pat.label(1 - mask.sum().item() / mask.numel())
        _zero(mod)


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that carry a mask from `apply_masks`, by name."""
    return {n: m for n, m in model.named_modules() if "hwprune_mask" in m._buffers}


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> its keep-mask (True = kept), for every masked module."""
    return {n: m.hwprune_mask for n, m in masked_modules(model).items()}


def reapply_masks(model: nn.Module) -> None:
    """Zero every pruned weight now (the hooks do it before the next forward anyway)."""
    for m in masked_modules(model).values():
        _zero(m)


def remove_masks(model: nn.Module) -> list[str]:
    """Remove masks, hooks and `hwprune_sparsity`; the pruned weights stay zero but may be trained again."""
    names = []
    for name, m in masked_modules(model).items():
        remove_mask_hooks(m)
        del m._buffers["hwprune_mask"]
        for attr in ("hwprune_sparsity", "_hwprune_version"):
            if hasattr(m, attr):
                delattr(m, attr)
        names.append(name)
    return names


def remove_mask_hooks(module: nn.Module) -> None:
    """Take off the two hooks `apply_masks` put on a module (mask buffer and label stay): the weight may then
    change without being re-zeroed, or be swapped for another tensor (`to_semi_structured`)."""
    for key in [k for k, h in module._forward_pre_hooks.items() if isinstance(h, _ReapplyMask)]:
        del module._forward_pre_hooks[key]
    handle = getattr(module.weight, "_hwprune_grad_handle", None)
    if handle is not None:
        handle.remove()
        del module.weight._hwprune_grad_handle


# ------------------------------------------------------------------------------------------ verification


def check_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """Every group of m consecutive weights of a row (2-D view) has at least m - n zeros (a mask: Falses)."""
    w = weight_matrix(weight)
    if w.shape[1] % m:
        return False
    nonzero = (w != 0).reshape(w.shape[0], -1, m).sum(-1)
    return bool((nonzero <= n).all())


def check_blocks(weight: torch.Tensor, bh: int, bw: int) -> bool:
    """Every bh x bw block of the 2-D view (edge blocks cut short) is all zero or has no zero (a mask works too)."""
    nonzero = (weight_matrix(weight) != 0).double()
    sums, counts = _block_scores(nonzero, bh, bw)
    n = sums / (bh * bw) * counts  # undo the edge scaling: the count of nonzeros in each block
    return bool(((n.round() == 0) | (n.round() == counts)).all())


@dataclass
class SparsityStats:
    """Fraction of zero weights per Conv/Linear layer and over all of them."""

    layers: dict[str, float]
    overall: float
    zeros: int
    total: int


def sparsity_of(model: nn.Module) -> SparsityStats:
    """Zeros of every Conv/Linear weight, per layer and overall (masked or not)."""
    layers, zeros, total = {}, 0, 0
    for name, m in model.named_modules():
        if is_maskable(m):
            z = int((m.weight == 0).sum())
            layers[name] = z / m.weight.numel()
            zeros, total = zeros + z, total + m.weight.numel()
    return SparsityStats(layers, zeros / max(total, 1), zeros, total)
