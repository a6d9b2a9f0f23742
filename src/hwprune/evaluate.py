"""Stage 7: accuracy, MACs, parameters, size, and measured latency of dense vs pruned."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """correct / total."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(len(x), 1)


def size_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (what the safetensors file holds, less its header)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def macs_params(model: nn.Module, example_inputs) -> tuple[int, int]:
    """MACs of one forward pass on `example_inputs` (whole batch) and the parameter count."""
    was = model.training
    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was)
    return int(macs), int(params)
