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


def size_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (what the safetensors file holds, less its header)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def count_macs(model: nn.Module, example_inputs) -> int:
    """Multiply-accumulates of the conv, linear and attention layers in one forward pass on `example_inputs`
    (the whole batch). Normalisation, activations and adds are not MACs and are not counted."""
    from .groups import run_hooked

    total = 0

    def hook(mod, args, out):
        nonlocal total
        if isinstance(mod, nn.MultiheadAttention):
            q = args[0]
            k = args[1] if len(args) > 1 else q
            e = mod.embed_dim  # q/k/v and output projections all have embed_dim rows (heads x head_dim)
            n_q, n_k = q.numel() // q.shape[-1], k.numel() // k.shape[-1]  # tokens x batch
            len_k = k.shape[1] if (mod.batch_first and k.dim() == 3) else k.shape[0]
            total += n_q * e * e + n_k * (mod.kdim + mod.vdim) * e  # q, k, v projections
            total += 2 * n_q * len_k * e  # scores q.k and the weighted sum of values, over all heads
            total += n_q * e * e  # output projection
            return
        if isinstance(out, torch.Tensor):
            if isinstance(mod, nn.Linear):
                total += out.numel() * mod.in_features
            elif isinstance(mod, nn.modules.conv._ConvNd):
                k = 1
                for s in mod.kernel_size:
                    k *= s
                total += out.numel() * (mod.in_channels // mod.groups) * k

    inside_mha = {
        id(m) for a in model.modules() if isinstance(a, nn.MultiheadAttention) for m in a.modules() if m is not a
    }
    counted = (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention)
    run_hooked(
        model, example_inputs, [m for m in model.modules() if isinstance(m, counted) and id(m) not in inside_mha], hook
    )
    return total


def macs_params(model: nn.Module, example_inputs) -> tuple[int, int]:
    """MACs of one forward pass on `example_inputs` (whole batch, `count_macs`) and the parameter count."""
    return count_macs(model, example_inputs), sum(p.numel() for p in model.parameters())
