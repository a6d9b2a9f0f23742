"""Latency regimes of a causal language model: prefill (the prompt in one call) and decode (one token with the
KV cache).

The two respond differently to the same cut. Prefill at batch 1 and a few hundred tokens is a large matrix
product per layer (compute-bound, like any model called on its example inputs). Decode is one token per
call reading every weight and the whole cache (memory- and overhead-bound): on `example:tinylm` a plan
chosen on prefill that ran at 0.43x of dense prefill decoded at 0.76x of dense per token
(benchmarks/results/llm-structured.md). So a decode budget is timed as decode.

`DecodeTarget` wraps a torch target. Its whole-model figure is one decode step: the model first runs the
context (the prompt of the example inputs) once, untimed, to fill its own KV cache; each timed call then
feeds one token and cuts the cache back to the context length, so every step attends over the same number
of positions. Its layer-table entries are the wrapped target's at the decode step's shapes: the example
inputs of a decode run are one token per sequence, so every Linear is timed at (batch, 1, features). The
attention over the cache is not in the table; the closed loop's whole-model measurements carry it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import is_transformers_model
from hwprune.hardware.timing import Timing

REGIMES = ("prefill", "decode")
#: The targets a decode step can be timed on: the model runs eagerly in this process (a KV cache object
#: does not cross into an exported ONNX graph or a remote device). Other targets say so with `eager = True`.
DECODE_TARGETS = ("cpu",)


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers decoder-only language model (`...ForCausalLM`): it takes and returns a KV cache."""
    return is_transformers_model(model) and type(model).__name__.endswith("ForCausalLM")


def decode_inputs(example) -> dict:
    """The example inputs of one decode step: the last token of each sequence of a prefill example."""
    if not isinstance(example, dict) or "input_ids" not in example:
        raise HwpruneError("a decode budget needs a text model's example inputs (input_ids); use --seq-len")
    return {"input_ids": example["input_ids"][:, -1:].clone()}


class DecodeTarget:
    """A torch target that times a causal LM's decode step at a fixed context length (see the module doc)."""

    def __init__(self, inner, context: torch.Tensor):
        if getattr(inner, "name", None) not in DECODE_TARGETS and not getattr(inner, "eager", False):
            raise HwpruneError(
                f"a decode budget is timed on {', '.join(DECODE_TARGETS)} only (the KV cache stays in this process); "
                f"got --target {getattr(inner, 'name', inner)}"
            )
        self.inner, self.context = inner, context
        self.name = inner.name
        self.regime = "decode"
        self.description = f"{inner.description}; decode: one token with the KV cache at context {context.shape[1]}"

    def fingerprint(self) -> dict:
        return {**self.inner.fingerprint(), "regime": f"decode@{self.context.shape[1]}"}

    def device_key(self) -> str:
        # The layer shapes of a decode step differ from prefill's anyway; the regime in the key keeps the two
        # tables apart on sight and says which one a cache file holds.
        return f"{self.inner.device_key()}-decode{self.context.shape[1]}"

    def runner(self, model: nn.Module, inputs) -> Callable[[], object]:
        return self.inner.runner(self.step(model, inputs), inputs)

    def step(self, model: nn.Module, inputs) -> nn.Module:
        """`model` as one decode step: called on `inputs` (one token per sequence), it runs that token against
        a KV cache of the context, filled here once, and cuts the cache back after each call."""
        ids = inputs["input_ids"]
        if ids.shape[0] != self.context.shape[0]:
            raise HwpruneError(
                f"decode step of batch {ids.shape[0]} against a context of batch {self.context.shape[0]}"
            )
        return _DecodeStep(model, self.context)

    def time_layer(self, layer: nn.Module, x: torch.Tensor) -> Timing:
        return self.inner.time_layer(layer, x)

    def time_models(self, models: Sequence[nn.Module], inputs, final: bool = False) -> list[Timing]:
        return self.inner.time_models([self.step(m, inputs) for m in models], inputs, final=final)

    def __getattr__(self, name: str):
        # What else the wrapped target offers (`protocol`, `threads`, ...), as it offers it.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class _DecodeStep(nn.Module):
    """One decode step of `model` against its own KV cache of `context` (filled on construction)."""

    def __init__(self, model: nn.Module, context: torch.Tensor):
        super().__init__()
        self.model = model.eval()
        # transformers renamed `past_key_values` to `cache` (5.25 warns on the old name, 5.40 drops it).
        self.keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        with torch.inference_mode():
            out = model(input_ids=context, use_cache=True)
        self.cache = out[self.keyword]

    def forward(self, input_ids):
        out = self.model(input_ids=input_ids, use_cache=True, **{self.keyword: self.cache})
        self.cache.crop(-input_ids.shape[1])  # back to the context: every step attends over the same positions
        return out.logits
