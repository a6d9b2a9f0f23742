"""Targets by name. A target times a single layer (for the table) and whole models (for the budget)."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call
from hwprune.core.registry import Registry
from hwprune.hardware.fingerprint import fingerprint, fingerprint_key, physical_cores, timing_mode
from hwprune.hardware.timing import (
    FAST_PROTOCOL,
    MODEL_PROTOCOL,
    TABLE_PROTOCOL,
    Timing,
    TimingProtocol,
    time_interleaved,
)

#: What every target provides (duck-typed; see CpuTarget for the reference implementation):
#:   name, description                      registry name and a one-line description (`hwprune targets`)
#:   fingerprint() -> dict                  everything a measurement depends on (device, runtime, dtype, threads)
#:   device_key() -> str                    a stable hash of the fingerprint: the latency-table key
#:   time_layer(layer, x) -> Timing         latency of one freshly built layer on input x (the table's entries)
#:   time_models(models, inputs, final=False) -> list[Timing]   interleaved whole-model latency
TARGETS: Registry[type] = Registry("target", "--target")
#: Resolvers for names that are not fixed registry entries (e.g. `sim:jetson-orin-nano`, `my-board.yaml`):
#: each takes the name and returns a factory (called with the target kwargs) or None if the name is not its.
RESOLVERS: list[Callable[[str], Callable[..., object] | None]] = []
#: Modules that register targets when imported; imported lazily so `import hwprune` stays light.
_BUILTIN_MODULES = (
    "hwprune.hardware.ort",
    "hwprune.hardware.cuda",
    "hwprune.hardware.sim",
    "hwprune.hardware.remote",
)


def register_target(name: str):
    def wrap(cls):
        cls.name = name
        return TARGETS.register(name, cls, getattr(cls, "description", ""))

    return wrap


def register_resolver(fn: Callable[[str], Callable[..., object] | None]):
    RESOLVERS.append(fn)
    return fn


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        # An optional dependency (e.g. onnxruntime) is missing: that target is simply not offered.
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(mod)


def list_targets() -> list[tuple[str, str]]:
    """(name, one-line description) of every target, including each resolver's named entries."""
    _load_builtins()
    rows = [(n, getattr(c, "description", "")) for n, c in TARGETS.items()]
    for r in RESOLVERS:
        rows += list(getattr(r, "entries", lambda: [])())
    return sorted(rows)


def get_target(name: str, **kwargs):
    _load_builtins()
    if name in TARGETS:
        return TARGETS[name](**kwargs)
    for r in RESOLVERS:
        factory = r(name)
        if factory is not None:
            return factory(**kwargs)
    names = ", ".join(n for n, _ in list_targets())
    raise HwpruneError(f"unknown target '{name}'; choose one of: {names} (or a spec .yaml file)")


@register_target("cpu")
class CpuTarget:
    """This machine's CPU, PyTorch eager, float32, a fixed number of intra-op threads."""

    description = "this machine's CPU, torch eager, float32, fixed threads (default: physical cores)"

    def __init__(
        self,
        threads: int | None = None,
        table_protocol: TimingProtocol = TABLE_PROTOCOL,
        model_protocol: TimingProtocol = MODEL_PROTOCOL,
    ):
        self.threads = threads or physical_cores()
        if os.environ.get("HWPRUNE_TIMING") == "fast":
            # Tests and smoke runs only: 3 calls per figure, so the plumbing runs in seconds; the figures are noise.
            table_protocol = model_protocol = FAST_PROTOCOL
        self.table_protocol = table_protocol
        self.model_protocol = model_protocol
        torch.set_num_threads(self.threads)

    def fingerprint(self) -> dict:
        return fingerprint(self.threads, timing=timing_mode(self.table_protocol, self.model_protocol))

    def device_key(self) -> str:
        return fingerprint_key(self.fingerprint())

    def runner(self, model: nn.Module, inputs):
        """A no-argument callable that runs `model` on `inputs` once, as this target times it."""
        model.eval()
        return functools.partial(call, model, inputs)

    def time_layer(self, layer: nn.Module, x: torch.Tensor) -> Timing:
        return time_interleaved([self.runner(layer, x)], self.table_protocol)[0]

    def time_models(self, models: Sequence[nn.Module], inputs, final: bool = False) -> list[Timing]:
        """Interleaved timing of several models on the same inputs (A B A B ...).

        `final`: the figure that goes in the report; timed over 4x as long to narrow its spread.
        """
        return time_interleaved([self.runner(m, inputs) for m in models], self.protocol(final))

    def protocol(self, final: bool = False) -> TimingProtocol:
        """Whole-model protocol; `final` (the report's figure) is timed 4x as long to narrow its spread."""
        p = self.model_protocol
        return replace(p, min_calls=p.min_calls * 2, min_s=p.min_s * 4) if final else p
