"""Perplexity of a causal language model on held-out text, with a sliding window.

A text longer than the model's context is scored in windows of `context` tokens whose ends advance by
`stride`; each window scores only the tokens the previous windows did not, so every token but the first is
scored exactly once, each with at least `context - stride` tokens before it (Hugging Face's "perplexity of
fixed-length models" recipe). With the same context and stride, two models are scored on the same tokens with
the same history, so their perplexities compare. Perplexity = exp(mean negative log-likelihood per token);
for a byte-level model that is per byte.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import eval_mode, logits


@dataclass(frozen=True)
class Perplexity:
    """exp(nll), the mean negative log-likelihood per token (nats), how many tokens were scored, and how."""

    perplexity: float
    nll: float
    tokens: int
    context: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)


def window_ends(n: int, length: int, stride: int) -> list[int]:
    """End positions (exclusive) of the windows of `length` tokens over `n`: length, length + stride, ..., n."""
    if n <= length:
        return [n]
    ends = list(range(length, n, stride))
    return ends + [n] if ends[-1] != n else ends


def perplexity(
    model: nn.Module, ids: torch.Tensor, context: int = 256, stride: int | None = None, batch_size: int = 16
) -> Perplexity:
    """Perplexity of `model` (a causal LM: `model(input_ids=...)` gives logits of shape (batch, tokens,
    vocab)) on the 1-D token ids `ids`, in windows of `context` input tokens advanced by `stride` (default
    context // 2). Windows of equal length run `batch_size` at a time."""
    stride = context // 2 if stride is None else stride
    if ids.dim() != 1 or len(ids) < 2:
        raise HwpruneError(f"perplexity needs a 1-D sequence of at least 2 token ids, got shape {tuple(ids.shape)}")
    if context < 1 or not 1 <= stride <= context:
        raise HwpruneError(f"perplexity: context ({context}) must be >= 1 and stride ({stride}) in [1, context]")
    # A window is context + 1 tokens: the model reads the first `context`, and predicts the last `context`.
    # Window k ends at ends[k] and scores the targets from the previous window's end on.
    ends = window_ends(len(ids), context + 1, stride)
    length = min(context + 1, len(ids))
    starts = [e - length for e in ends]
    firsts = [1] + ends[:-1]  # first scored position of each window (position 0 has no history)
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(ends), batch_size):
            rows = range(i, min(i + batch_size, len(ends)))
            x = torch.stack([ids[starts[k] : ends[k]] for k in rows]).to(device)
            out = logits(model, {"input_ids": x[:, :-1]}).float()
            nll = F.cross_entropy(out.reshape(-1, out.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
            nll = nll.reshape(len(rows), length - 1)
            for j, k in enumerate(rows):
                lo = firsts[k] - starts[k] - 1  # the target at position p is row index p - start - 1
                total += float(nll[j, lo:].sum(dtype=torch.float64))
                count += length - 1 - lo
    mean = total / count
    return Perplexity(math.exp(mean), mean, count, context, stride)
