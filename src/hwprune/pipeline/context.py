"""What every method of the pipeline shares: the run's objects (`Run`), what a method hands back
(`Outcome`), and the registry of methods by kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from hwprune.core.budget import Budget
from hwprune.core.data import Dataset, LoaderData
from hwprune.core.modules import logits
from hwprune.core.registry import Registry
from hwprune.evaluate.metrics import Metric, evaluate
from hwprune.hardware.base import Target
from hwprune.hardware.stability import MachineMonitor
from hwprune.pipeline.config import PruneConfig


@dataclass
class Run:
    """One pruning run's inputs, resolved and checked: the objects every stage works on."""

    cfg: PruneConfig
    dense: nn.Module
    example: object  # a tensor (batch first), or a tuple / dict of tensors
    target: Target
    budgets: list[Budget]
    data: Dataset | LoaderData | None = None
    loss_fn: Callable | None = None
    metric: Metric | None = None
    progress: bool = True
    criterion: str = "l1"
    stages: dict[str, float] = field(default_factory=dict)
    #: Every median of the dense model timed during the run, in order: how far the machine drifted.
    dense_medians: list[float] = field(default_factory=list)
    monitor: MachineMonitor = field(default_factory=MachineMonitor)
    #: Width of the dense model's output on the data (its class count), from the set-up checks.
    classes: int | None = None
    #: A causal LM's budgeted latency regime (prefill, decode; `pipeline.regimes`) and its prompt (the example
    #: inputs as given: under decode, `example` is one token per sequence and the prompt is the KV cache's context).
    regime: str | None = None
    prompt: object = None

    def log(self, msg: str) -> None:
        if self.progress:
            print(msg, flush=True)

    def score(self, model: nn.Module) -> float | None:
        """The metric on the validation batches (None without labelled data)."""
        return evaluate(model, self.data.validation(), self.metric) if self.data is not None else None

    def calibration(self, n: int, seed: int) -> list:
        """`n` (inputs, targets) batches. Unlabelled data, and no data at all (random inputs like the example
        inputs), are labelled by the dense model's own predictions (self-distillation targets)."""
        if self.data is not None:
            batches = self.data.calibration(n, seed=seed)
        else:
            gen = torch.Generator().manual_seed(seed)
            batches = [(random_like(self.example, gen), None) for _ in range(max(1, n // 4))]
        with torch.no_grad():
            return [(x, logits(self.dense, x).argmax(-1) if y is None else y) for x, y in batches]


def random_like(inputs, gen: torch.Generator):
    """Standard-normal floating tensors shaped like `inputs` (a tensor, tuple or dict); other tensors kept."""
    if isinstance(inputs, torch.Tensor):
        return torch.randn(inputs.shape, generator=gen) if inputs.is_floating_point() else inputs
    if isinstance(inputs, dict):
        return {k: random_like(v, gen) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(random_like(v, gen) for v in inputs)
    return inputs


@dataclass
class Outcome:
    """What a method returns: the pruned model, its plan (anything with `save(path)` and `to_dict()`), and
    the method's own sections of the report."""

    model: nn.Module
    plan: object
    score_oneshot: float | None = None
    finetuned: bool = False  # the method fine-tuned the model itself (between rounds)
    sections: dict = field(default_factory=dict)


#: A method kind (budget, units, weights, hierarchical) -> its handler, `handler(run) -> Outcome`.
METHODS: Registry[Callable[[Run], Outcome]] = Registry("method")
