"""Stage 7: the task metric of a model on validation batches (default top-1 accuracy)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from hwprune.core.modules import logits

#: metric(outputs, targets) -> the batch's mean (weighted by batch size over the whole validation set).
Metric = Callable[[torch.Tensor, torch.Tensor], float]


def top1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of samples whose highest-scoring class is the target."""
    return int((outputs.argmax(-1) == targets).sum()) / max(len(targets), 1)


def evaluate(model: nn.Module, batches: Iterable, metric: Metric | None = None) -> float | None:
    """The mean of `metric` (default top-1) over (inputs, targets) batches, weighted by batch size; None
    when the batches carry no targets."""
    metric = metric or top1
    total, n = 0.0, 0
    model.eval()  # left in eval mode, as the pipeline times it next
    with torch.inference_mode():
        for x, y in batches:
            if y is None:
                return None
            total += metric(logits(model, x), y) * len(y)
            n += len(y)
    return total / max(n, 1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """correct / total."""
    correct = 0
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(len(x), 1)
