"""The method vocabulary: granularities, schedules, and how a granularity name is read."""

from __future__ import annotations

from hwprune.apply.masks import parse_pattern
from hwprune.core.errors import HwpruneError
from hwprune.finetune.weights import gradual_sparsity, iterative_targets

GRANULARITIES = {
    "channel": "conv filters / linear neurons with everything coupled to them (DepGraph groups), removed",
    "head": "attention heads of nn.MultiheadAttention (e.g. torchvision ViT), removed",
    "block": "whole residual blocks (x + f(x)) replaced by identity",
    "unstructured": "individual weights, masked; saved compressed (bitmask or CSR)",
    "N:M": "N kept in every M consecutive weights, e.g. 2:4 (sparse tensor cores), masked",
    "block-sparse": "blocks of weights, e.g. block4x1 or block8x8 (block-sparse = block4x1), masked",
}
SCHEDULES = {
    "one-shot": "prune once, then fine-tune",
    "iterative": "--rounds rounds of prune -> fine-tune, each removing the same share of what is left",
    "gradual": "sparsity ramps up on a cubic schedule during fine-tuning (Zhu & Gupta 2017)",
    "threshold-decay": "each round removes units scoring below threshold x decay^round (needs --threshold)",
}
UNIT_KINDS = ("channel", "head", "block")


def parse_granularity(text: str):
    """(`channel` | `head` | `block` | `weight`, the weight Pattern or None)."""
    t = text.strip()
    if t in UNIT_KINDS:
        return t, None
    if t in ("block-sparse", "blocksparse"):
        t = "block4x1"
    if t == "N:M":
        raise HwpruneError("--granularity N:M: give the numbers, e.g. 2:4 or 4:8")
    try:
        return "weight", parse_pattern(t)
    except HwpruneError:
        raise HwpruneError(
            f"unknown granularity '{text}'; choose channel, head, block, unstructured, N:M (e.g. 2:4) or "
            "block-sparse (e.g. block4x1, block8x8)"
        ) from None


def ramp(schedule: str, sparsity: float, rounds: int) -> list[float]:
    """Fraction of the original units removed after each round."""
    if schedule == "one-shot":
        return [sparsity]
    if schedule == "iterative":
        return iterative_targets(sparsity, rounds)
    if schedule == "gradual":
        return [gradual_sparsity(r, 0, rounds, sparsity) for r in range(1, rounds + 1)]
    raise HwpruneError(f"schedule '{schedule}' has no sparsity ramp")
