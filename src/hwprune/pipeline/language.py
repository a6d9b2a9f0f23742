"""What the pipeline knows of language models: which models are decoders the layer-by-layer methods take, and
their perplexity on the run's held-out batches (a causal LM's quality: the report's top-1 accuracy means
nothing for one, and its text batches carry no labels)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwprune.apply.sequential import find_blocks
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import eval_mode, is_transformers_model, logits
from hwprune.evaluate.perplexity import Perplexity
from hwprune.hardware.regime import is_causal_lm  # noqa: F401  (the pipeline's test for a causal LM)


def has_decoder_blocks(model: nn.Module) -> bool:
    """A transformers model with a list of blocks holding Linear layers (`model.layers`): what
    `hwprune.apply.sequential` prunes block by block."""
    if not is_transformers_model(model):
        return False
    try:
        find_blocks(model)
    except HwpruneError:
        return False
    return True


def batch_perplexity(model: nn.Module, batches: Iterable) -> Perplexity | None:
    """Perplexity of a causal LM on (inputs, _) batches of token ids, each sequence scored on its own: token t+1
    predicted from tokens <= t, padding (attention_mask 0) neither read as a target nor as the token before one.
    None when no batch holds `input_ids` with two tokens."""
    total, count, longest = 0.0, 0, 0
    with eval_mode(model), torch.no_grad():
        for x, _y in batches:
            if not isinstance(x, dict) or not isinstance(x.get("input_ids"), torch.Tensor):
                continue
            ids = x["input_ids"]
            if ids.dim() != 2 or ids.shape[1] < 2:
                continue
            mask = x.get("attention_mask")
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            out = logits(model, x)[:, :-1].float()
            nll = F.cross_entropy(out.reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
            valid = (mask[:, 1:] & mask[:, :-1]).reshape(-1)
            total += float(nll[valid].sum(dtype=torch.float64))
            count += int(valid.sum())
            longest = max(longest, ids.shape[1])
    if not count:
        return None
    return Perplexity(math.exp(total / count), total / count, count, longest, longest)


def perplexity_note(dense: Perplexity | None, pruned: Perplexity | None, when: str) -> str | None:
    """One report line: held-out perplexity dense -> pruned."""
    if dense is None or pruned is None:
        return None
    return (
        f"held-out perplexity per token: dense {dense.perplexity:.3f} -> pruned {pruned.perplexity:.3f} {when} "
        f"({dense.tokens} tokens of the validation batches, each sequence scored on its own)"
    )
