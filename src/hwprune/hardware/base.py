"""The contract every target meets: what the pipeline may ask of the hardware it prunes for."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn

from hwprune.hardware.timing import Timing


@runtime_checkable
class Target(Protocol):
    """Device + runtime + dtype, measured (cpu, cpu-ort, cuda) or simulated (sim:NAME).

    Optional extras a target may add: `model_energy(model, inputs)` (joules, simulated targets) and
    `in_graph_times(model, inputs)` (per-kernel times inside the whole graph, ONNX Runtime).
    """

    name: str
    description: str

    def fingerprint(self) -> dict:
        """The machine and software the figures come from (recorded with every figure)."""
        ...

    def device_key(self) -> str:
        """A stable key for the latency table: same key, same measured entries."""
        ...

    def runner(self, model: nn.Module, inputs) -> Callable[[], object]:
        """A no-argument callable that runs `model` on `inputs` once, as this target times it."""
        ...

    def time_layer(self, layer: nn.Module, x: torch.Tensor) -> Timing:
        """One layer alone on an input of the right shape (a latency-table entry)."""
        ...

    def time_models(self, models: Sequence[nn.Module], inputs, final: bool = False) -> list[Timing]:
        """Whole models, interleaved on the same inputs (A B A B ...); `final` times the report's figure."""
        ...
