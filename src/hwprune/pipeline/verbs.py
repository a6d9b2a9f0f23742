"""The pipeline's stages as plain verbs, for a researcher who composes them by hand:

groups = hwprune.find_groups(model, x)
scores = hwprune.score(model, groups, "l1", [])
target = hwprune.get_target("cpu")
cost = hwprune.build_table(groups, target)
widths = hwprune.allocate(cost, groups, scores, aim=0.5 * cost.predict(cost.dense_widths()))
pruned = hwprune.apply_plan(model, x, hwprune.Plan.from_widths(widths, scores, cost.sizes))
hwprune.measure(pruned, x, target, against=model)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from hwprune.cost.curves import Profiler
from hwprune.cost.model import CostModel
from hwprune.finetune.trainer import TrainConfig, fit
from hwprune.groups.analysis import GroupAnalysis
from hwprune.hardware.base import Target
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.targets import get_target
from hwprune.hardware.timing import Timing, ratio
from hwprune.importance import normalized
from hwprune.plan.allocate import Problem, get_allocator


def build_table(groups: GroupAnalysis, target: Target | str = "cpu", cache: str | None = None, progress=True):
    """The measured latency table of every prunable layer (cached), as a CostModel over group widths."""
    target = get_target(target) if isinstance(target, str) else target
    return CostModel(groups, Profiler(target, LatencyCache(cache), progress).build(groups))


def allocate(
    cost: CostModel, groups: GroupAnalysis, scores: dict, aim: float, allocator: str = "hw", criterion: str = "l1"
) -> dict[str, int]:
    """A width per group whose predicted latency is at most `aim` (seconds), keeping the most importance."""
    problem = Problem(cost, {g.id: g.candidates for g in groups.groups}, normalized(scores, criterion))
    return get_allocator(allocator)(problem, aim)


def finetune(
    model: nn.Module,
    data,
    epochs: int = 1,
    lr: float = 1e-3,
    teacher: nn.Module | None = None,
    loss_fn=None,
    seed: int = 0,
    progress: bool = True,
    config: TrainConfig | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
) -> nn.Module:
    """Fine-tune `model` in place on `data` (any form `hwprune.prune` takes), distilling from `teacher`.

    `config` (a `TrainConfig`: optimizer, schedule, precision, accumulation, ...) replaces epochs / lr / seed;
    with `checkpoint_dir` a checkpoint is written at each epoch's end and `resume=True` continues from it.
    `finetune.trainer.fit` does the work and returns its figures too.
    """
    cfg = config or TrainConfig(epochs=epochs, lr=lr, seed=seed)
    fit(
        model,
        data,
        cfg,
        teacher=teacher,
        loss_fn=loss_fn,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
    )
    return model


@dataclass
class Measurement:
    """A measured latency (median and interquartile range, seconds) and, against another model, the
    median of the interleaved per-round ratios (MEASURING.md)."""

    timing: Timing
    other: Timing | None = None
    ratio: float | None = None

    @property
    def median(self) -> float:
        return self.timing.median

    @property
    def iqr(self) -> float:
        return self.timing.iqr


def measure(model: nn.Module, inputs, target: Target | str = "cpu", against: nn.Module | None = None) -> Measurement:
    """Latency of `model` on `target`; with `against`, both interleaved and their ratio model / against."""
    target = get_target(target) if isinstance(target, str) else target
    if against is None:
        return Measurement(target.time_models([model], inputs, final=True)[0])
    t, o = target.time_models([model, against], inputs, final=True)
    return Measurement(t, o, ratio(t, o))
