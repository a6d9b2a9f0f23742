"""Helpers every stage uses on a model: call it on its example inputs, run it with hooks, count it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F


def as_tuple(x) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block, its own train/eval mode restored after it."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def call(model: nn.Module, example_inputs):
    """Call `model` on its inputs: a dict is passed as keywords, a tuple or list as positional arguments."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


#: Keys under which a model's dict-like output holds the tensor a loss or metric reads: Hugging Face
#: `ModelOutput.logits`, torchvision segmentation's {"out": ...}, sentence encoders' embeddings.
PRIMARY_KEYS = ("logits", "out", "last_hidden_state", "pooler_output")


def primary_output(out):
    """The tensor a loss or a metric reads from whatever the model returned: the tensor itself, the first of
    a tuple or list, or `logits` / `out` / ... of a dict or a transformers `ModelOutput`."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        for key in PRIMARY_KEYS:
            if key in out and isinstance(out[key], torch.Tensor):
                return out[key]
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out:
        return primary_output(out[0])
    raise TypeError(f"cannot find a tensor in the model's output ({type(out).__name__})")


def logits(model: nn.Module, inputs) -> torch.Tensor:
    """`call(model, inputs)` reduced to the tensor losses and metrics read (`primary_output`)."""
    return primary_output(call(model, inputs))


def is_transformers_model(model: nn.Module) -> bool:
    """A Hugging Face transformers model: its logits hold the classes last ((batch, tokens, vocab) for text)."""
    return type(model).__module__.startswith("transformers.")


def classes_last_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the classes in the last dimension of `outputs`: a causal LM's (batch, tokens, vocab)
    logits against (batch, tokens) token ids. F.cross_entropy reads classes from dim 1, i.e. the tokens:
    wrong whenever tokens == vocab (a byte-level model at 256 tokens) and an error otherwise."""
    if outputs.dim() > 2 and not targets.is_floating_point() and targets.shape == outputs.shape[:-1]:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(outputs, targets)


def default_loss(model: nn.Module) -> Callable:
    """The loss used when the caller names none: cross-entropy over the classes, which a transformers model
    holds in the last dimension (`classes_last_cross_entropy`), other models in dimension 1 (images, masks)."""
    return classes_last_cross_entropy if is_transformers_model(model) else F.cross_entropy


def run_hooked(model: nn.Module, example_inputs, modules, hook) -> object:
    """One no-grad, eval-mode forward pass with `hook` as a forward hook on each of `modules`; the hooks are
    removed and the model's train/eval mode restored afterwards. Returns the model's output."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with eval_mode(model), torch.no_grad():
            return call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()


def size_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (what the safetensors file holds, less its header)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def count_macs(model: nn.Module, example_inputs) -> int:
    """Multiply-accumulates of the conv, linear and attention layers in one forward pass on `example_inputs`
    (the whole batch). Normalisation, activations and adds are not MACs and are not counted."""
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


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_params(model: nn.Module, example_inputs) -> tuple[int, int]:
    """MACs of one forward pass on `example_inputs` (whole batch, `count_macs`) and the parameter count."""
    return count_macs(model, example_inputs), param_count(model)
