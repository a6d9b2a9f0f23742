"""Helpers shared by head and block removal (`hwprune.apply.heads`, `hwprune.apply.blocks`).

Replacing a submodule by name, counting parameters, checking a removal ratio, and the data-free
calibration batches (random inputs labelled by the dense model) that data-reading criteria use when
no data is given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import logits


def check_ratio(ratio: float) -> None:
    """A fraction of heads or blocks to remove must be in [0, 1); anything else is a HwpruneError."""
    if not 0.0 <= ratio < 1.0:
        raise HwpruneError(f"ratio {ratio} is outside [0, 1); give the fraction of heads/blocks to remove")


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called `name` (a dotted path, as in `named_modules`) by `new`, in place."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def calibration_batches(model: nn.Module, example_inputs, n: int = 2, seed: int = 0) -> list:
    """Random inputs shaped like `example_inputs`, labelled by the model's own predictions.

    The data-free calibration of `hwprune.prune` (self-distillation targets): a loss on these measures how
    far a pruned model moves from the dense one.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    was = model.training
    model.eval()
    for _ in range(n):
        x = (
            torch.randn(example_inputs.shape, generator=gen).to(example_inputs.device, example_inputs.dtype)
            if isinstance(example_inputs, torch.Tensor)
            else example_inputs
        )
        with torch.no_grad():
            y = logits(model, x)
        out.append((x, y.argmax(-1)))
    model.train(was)
    return out


def mean_loss(model: nn.Module, batches: list, loss_fn: Callable | None) -> float:
    """Mean of `loss_fn` (default cross-entropy) over (inputs, labels) batches, without gradients."""
    loss_fn = loss_fn or F.cross_entropy
    with torch.no_grad():
        return sum(float(loss_fn(logits(model, x), y)) for x, y in batches) / len(batches)
