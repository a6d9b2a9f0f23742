"""The method vocabulary: granularities, schedules, and how a granularity name is read."""

from __future__ import annotations

from hwprune.apply.layers import DEFAULT_LAYER_CRITERION, LAYER_CRITERIA
from hwprune.apply.masks import parse_pattern
from hwprune.core.errors import HwpruneError
from hwprune.finetune.weights import gradual_sparsity, iterative_targets
from hwprune.importance import get_criterion

GRANULARITIES = {
    "channel": "conv filters / linear neurons with everything coupled to them (DepGraph groups), removed",
    "head": "attention heads of nn.MultiheadAttention (e.g. torchvision ViT), removed",
    "block": "whole residual blocks (x + f(x)) replaced by identity",
    "layer": "whole decoder layers of a transformers language model, deleted (ShortGPT; --criterion "
    + ", ".join(LAYER_CRITERIA.names())
    + f", default {DEFAULT_LAYER_CRITERION}); the config and the KV cache follow",
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
UNIT_KINDS = ("channel", "head", "block", "layer")
#: Weight-level methods that prune a language model's decoder blocks one after another on calibration text
#: (`hwprune.apply.sequential`): `--criterion NAME` with `--granularity unstructured` or N:M. `wanda` is also an
#: element criterion of `hwprune.importance` (any model); the other two exist only block by block.
SEQUENTIAL = {
    "magnitude": "|w|, the lowest fraction of each layer (the LLM papers' baseline)",
    "wanda": "|W_ij| x ||X_j|| per output row, on the inputs the already-pruned blocks produce (Sun et al. 2023)",
    "sparsegpt": "OBS mask and weight update from the layer Hessian, lazy blocks (Frantar & Alistarh 2023)",
}


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


def language_model_methods() -> list[tuple[str, str]]:
    """(name, description) of the criteria that only language models take: the block-by-block weight methods and
    the decoder-layer criteria (`hwprune methods`)."""
    rows = [(n, f"{d} [unstructured, N:M]") for n, d in SEQUENTIAL.items()]
    return rows + [(n, f"{LAYER_CRITERIA.describe(n)} [layer]") for n in LAYER_CRITERIA.names()]


def check_criterion(m) -> None:
    """The criterion against the granularity, selection and schedule of a MethodConfig: a combination that no
    method runs is a HwpruneError naming the flag to change."""
    kind, pattern = parse_granularity(m.granularity)
    c = m.criterion
    if kind == "layer":
        if c is not None and c not in LAYER_CRITERIA:
            raise HwpruneError(
                f"--criterion {c} does not score decoder layers; with --granularity layer use "
                f"{' or '.join(LAYER_CRITERIA.names())} (default {DEFAULT_LAYER_CRITERION}, ShortGPT)"
            )
        return
    if c in SEQUENTIAL and c != "wanda":
        if kind != "weight" or pattern.kind == "block":
            raise HwpruneError(
                f"--criterion {c} masks single weights layer by layer: use --granularity unstructured (with "
                f"--sparsity) or N:M (e.g. 2:4), not {m.granularity}"
            )
        if m.selection != "ratio" or m.schedule != "one-shot":
            raise HwpruneError(
                f"--criterion {c} prunes once to a fixed sparsity (one-shot, as in the paper): use --sparsity F "
                f"(or N:M) with --schedule one-shot, not --selection {m.selection} / --schedule {m.schedule}"
            )
        if m.scope != "layer":
            raise HwpruneError(f"--criterion {c} gives every layer the same sparsity: drop --scope {m.scope}")
        return
    if c in LAYER_CRITERIA and c not in ("random",):
        raise HwpruneError(f"--criterion {c} scores whole decoder layers: use it with --granularity layer")
    if c:
        get_criterion(c)


def ramp(schedule: str, sparsity: float, rounds: int) -> list[float]:
    """Fraction of the original units removed after each round."""
    if schedule == "one-shot":
        return [sparsity]
    if schedule == "iterative":
        return iterative_targets(sparsity, rounds)
    if schedule == "gradual":
        return [gradual_sparsity(r, 0, rounds, sparsity) for r in range(1, rounds + 1)]
    raise HwpruneError(f"schedule '{schedule}' has no sparsity ramp")
