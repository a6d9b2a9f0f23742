"""Stage 7: accuracy, MACs, parameters, size, and measured latency of dense vs pruned."""

from __future__ import annotations

import torch
import torch.nn as nn


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """correct / total."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(len(x), 1)






