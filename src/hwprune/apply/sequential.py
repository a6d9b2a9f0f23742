"""Weight sparsity for language models, block by block on calibration text: magnitude, Wanda and SparseGPT.

Each Linear layer inside the model's repeated blocks (a transformer's decoder layers) gets a mask, computed
from the inputs that the calibration text produces at that layer once every earlier block has been pruned
(sequential, as in both papers): block i is run on its recorded inputs with hooks on its Linears, its
layers are pruned, and the pruned block is run again to give block i + 1 its inputs. The embedding and
the output layer stay dense (both papers leave them dense too).

- magnitude: |W|, the lowest fraction removed per layer (both papers' baseline).
- Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"):
  |W_ij| * ||X_j||_2, the input feature's norm over the calibration tokens; compared per output row
  (the paper's choice for LLaMA) or over the whole layer (`group="layer"`). No weight update.
- SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot"): the layer Hessian H = 2 X X^T of the calibration inputs, dampened by 1% of its mean
  diagonal; columns processed left to right in lazy blocks of 128, each block's mask chosen by
  w^2 / [H^-1]_jj^2 (adaptive mask selection), each pruned weight's error spread over the remaining
  columns by the optimal brain surgeon update through the Cholesky factor of H^-1.

Unstructured (a fraction of each layer) or N:M (N kept of every M consecutive inputs of a row). The masks
are applied with `hwprune.apply.masks.apply_masks`, so they hold through fine-tuning and save compressed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from hwprune.apply.masks import Pattern, apply_masks, compute_masks, parse_pattern, resolve_sparsity
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call, eval_mode

METHODS = ("magnitude", "wanda", "sparsegpt")
GROUPS = ("row", "layer")
#: SparseGPT's lazy batch size and dampening: the paper's (and reference code's) defaults, blocksize 128 and
#: percdamp 0.01 (1% of the mean diagonal of H added to the diagonal).
BLOCKSIZE, DAMP = 128, 0.01


@dataclass(frozen=True)
class SequentialConfig:
    """How `prune_sequential` masks the blocks' Linear layers.

    Args:
        method: "magnitude", "wanda" or "sparsegpt".
        pattern: "unstructured" or "N:M" (e.g. "2:4").
        sparsity: the fraction of each layer's weights removed (unstructured); N:M implies 1 - N/M.
        group: which weights a Wanda score is compared against: "row" (each output row, the paper's choice)
            or "layer". Magnitude always compares per layer, SparseGPT per lazy block.
        blocksize, damp: SparseGPT's lazy column block and dampening fraction.
        sequential: each block's statistics from the already-pruned earlier blocks (True, both papers) or
            from the dense model (False; for comparison).
    """

    method: str = "sparsegpt"
    pattern: str = "unstructured"
    sparsity: float | None = 0.5
    group: str = "row"
    blocksize: int = BLOCKSIZE
    damp: float = DAMP
    sequential: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise HwpruneError(f"method {self.method!r}: choose one of {', '.join(METHODS)}")
        pat = parse_pattern(self.pattern)
        if pat.kind == "block":
            raise HwpruneError(f"pattern {pat.text}: sequential pruning takes unstructured or N:M")
        resolve_sparsity(pat, self.sparsity if pat.kind != "nm" else None)
        if self.group not in GROUPS:
            raise HwpruneError(f"group {self.group!r}: choose one of {', '.join(GROUPS)}")
        if self.blocksize < 1 or not 0 <= self.damp < 1:
            raise HwpruneError(f"blocksize ({self.blocksize}) must be >= 1 and damp ({self.damp}) in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, modules) of the model's repeated blocks: the first ModuleList whose members hold Linear layers
    (a transformers decoder's `model.layers`)."""
    for name, m in model.named_modules():
        if (
            isinstance(m, nn.ModuleList)
            and len(m)
            and all(any(isinstance(x, nn.Linear) for x in b.modules()) for b in m)
        ):
            return name, m
    raise HwpruneError(f"{type(model).__name__} has no list of blocks with Linear layers to prune block by block")


class _Stop(Exception):
    """Raised by the hook that records the first block's inputs: the rest of the forward pass is not needed."""


def block_inputs(model: nn.Module, block: nn.Module, batches: Iterable) -> list[tuple[tuple, dict]]:
    """(args, kwargs) the model passes `block` on each calibration batch (the forward stops there)."""
    got: list[tuple[tuple, dict]] = []

    def hook(mod, args, kwargs):
        got.append((args, dict(kwargs)))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with eval_mode(model), torch.no_grad():
            for x in batches:
                with contextlib.suppress(_Stop):
                    call(model, x)
    finally:
        handle.remove()
    if not got:
        raise HwpruneError("no calibration batch reached the first block; pass at least one batch of inputs")
    return got


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, h: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def _run_block(block: nn.Module, inputs: list[tuple[tuple, dict]]) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for args, kwargs in inputs:
            out = block(*args, **kwargs)
            outs.append(out[0] if isinstance(out, (tuple, list)) else out)
    return outs


class _Stats:
    """Per-layer input statistics over the calibration tokens: sum of x_j^2 (Wanda) and X X^T (SparseGPT)."""

    def __init__(self, layer: nn.Linear, hessian: bool):
        d = layer.in_features
        self.n = 0
        self.sq = torch.zeros(d, dtype=torch.float64)
        self.xx = torch.zeros(d, d, dtype=torch.float64) if hessian else None

    def __call__(self, mod, args, out):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64).cpu()
        self.n += x.shape[0]
        self.sq += (x * x).sum(0)
        if self.xx is not None:
            self.xx += x.T @ x

    def hessian(self) -> torch.Tensor:
        """H = 2 X X^T / n (the paper's scaling; the mask and the update do not depend on the scale)."""
        return 2 * self.xx / max(self.n, 1)


def _per_row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask removing the lowest round(sparsity * columns) scores of every row."""
    k = round(sparsity * score.shape[1])
    keep = torch.ones_like(score, dtype=torch.bool)
    if k:
        keep.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, False)
    return keep


def _masks_of(score: torch.Tensor, pattern: Pattern, sparsity: float) -> torch.Tensor:
    """Keep-mask of one layer by `compute_masks`: N:M per group of M inputs, else the lowest per layer."""
    holder = nn.Module()
    holder.w = nn.Linear(score.shape[1], score.shape[0], bias=False)
    s = None if pattern.kind == "nm" else sparsity
    return compute_masks(holder, {"w": score}, pattern, s, layers=["w"])["w"]


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: Pattern,
    sparsity: float,
    blocksize: int = BLOCKSIZE,
    damp: float = DAMP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned and updated weight, keep-mask) of one Linear weight (out x in) given its input Hessian
    H = 2 X X^T (in x in): SparseGPT's `fasterprune` (Frantar & Alistarh 2023, Algorithm 1)."""
    W = weight.detach().to(torch.float64).clone()
    H = hessian.to(torch.float64).clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0  # inputs that were always zero: their weights do not matter
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:
        raise HwpruneError(
            "SparseGPT: the layer Hessian is not positive definite even after dampening; raise damp or give more "
            "calibration text"
        ) from None
    pruned = torch.zeros_like(W, dtype=torch.bool)
    drop = pattern.m - pattern.n if pattern.kind == "nm" else 0  # weights removed per group of M
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if pattern.kind == "nm":
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            # Adaptive mask selection: the block's lowest OBS saliencies w^2 / [H^-1]_jj^2.
            sal = (W1**2 / d.reshape(1, -1) ** 2).flatten()
            mask1 = torch.zeros(sal.numel(), dtype=torch.bool)
            k = round(sparsity * sal.numel())
            if k:
                mask1[torch.topk(sal, k, largest=False).indices] = True
            mask1 = mask1.reshape(W1.shape)
        for i in range(i2 - i1):
            w = W1[:, i]
            if drop and i % pattern.m == 0:
                sal = W1[:, i : i + pattern.m] ** 2 / d[i : i + pattern.m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(sal, drop, dim=1, largest=False).indices, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.to(weight.dtype), ~pruned


def _prune_layer(layer: nn.Linear, stats: _Stats, cfg: SequentialConfig, pattern: Pattern, s: float) -> torch.Tensor:
    w = layer.weight.detach()
    if cfg.method == "sparsegpt":
        new, keep = sparsegpt(w, stats.hessian(), pattern, s, cfg.blocksize, cfg.damp)
        with torch.no_grad():
            layer.weight.copy_(new)
        return keep
    score = w.abs().double()
    if cfg.method == "wanda":
        score = score * stats.sq.sqrt().reshape(1, -1)
    group = cfg.group if cfg.method == "wanda" else "layer"
    if pattern.kind != "nm" and group == "row":
        return _per_row_mask(score, s)
    return _masks_of(score, pattern, s)


def prune_sequential(model: nn.Module, calibration: Iterable, config: SequentialConfig | None = None) -> dict:
    """Mask every Linear inside the model's blocks (in place), block by block; returns the keep-masks by name.

    Args:
        calibration: batches of model inputs (a dict such as {"input_ids": ...}, a tensor or a tuple), e.g.
            128 windows of text in a few batches.
        config: the method, pattern and sparsity (`SequentialConfig`).
    """
    cfg = config or SequentialConfig()
    pattern = parse_pattern(cfg.pattern)
    s = resolve_sparsity(pattern, cfg.sparsity if pattern.kind != "nm" else None)
    prefix, blocks = find_blocks(model)
    batches = list(calibration)
    inputs = block_inputs(model, blocks[0], batches)
    masks: dict[str, torch.Tensor] = {}
    with eval_mode(model):
        for i, block in enumerate(blocks):
            linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
            stats = {n: _Stats(m, cfg.method == "sparsegpt") for n, m in linears.items()}
            handles = [m.register_forward_hook(stats[n]) for n, m in linears.items()]
            try:
                dense_out = _run_block(block, inputs)
            finally:
                for h in handles:
                    h.remove()
            block_masks = {}
            for n, m in linears.items():
                if pattern.kind == "nm" and m.in_features % pattern.m:
                    continue  # no whole groups of M inputs: left dense (as compute_masks does by default)
                block_masks[n] = _prune_layer(m, stats[n], cfg, pattern, s)
            apply_masks(block, block_masks, pattern)
            masks.update({f"{prefix}.{i}.{n}": k for n, k in block_masks.items()})
            outs = _run_block(block, inputs) if cfg.sequential else dense_out
            inputs = [_with_hidden(a, k, h) for (a, k), h in zip(inputs, outs, strict=True)]
    if not masks:
        raise HwpruneError(f"no Linear layer in the blocks can take pattern {pattern.text}")
    return masks


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, inputs: torch.Tensor) -> float:
    """||W X - W' X||_F^2 / ||W X||_F^2 on the inputs X (tokens x in): what SparseGPT minimises per layer."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    ref = x @ weight.double().T
    return float(((x @ pruned.double().T - ref) ** 2).sum() / (ref**2).sum())
