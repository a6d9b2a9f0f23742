"""Group-level importance measured as loss: how much the calibration loss rises when one group alone is
narrowed to each candidate width (layer sensitivity, as NetAdapt and AMC measure it).

The hardware allocator maximises the sum of per-group values; a sum of channel scores (HALP's value)
is not additive in accuracy and lets the knapsack squeeze one group into a bottleneck, while the
measured loss rise of each group is close to additive for moderate pruning. The channels kept at a
width are still chosen by the criterion's ranking.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .apply import apply_plan, recalibrate_bn
from .cost import _spread
from .groups import GroupAnalysis, _forward
from .plan import make_plan

#: Widths measured per group; values in between are interpolated linearly.
POINTS = 6


def _loss(model: nn.Module, batches: list, loss_fn: Callable) -> float:
    model.eval()
    with torch.no_grad():
        return float(np.mean([float(loss_fn(_forward(model, x), y)) for x, y in batches]))


def group_sensitivity(
    model: nn.Module,
    example_inputs,
    analysis: GroupAnalysis,
    scores: dict[str, np.ndarray],
    batches: list,
    loss_fn: Callable = F.cross_entropy,
    progress: bool = True,
    around: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Group id -> value per candidate width: minus the calibration loss rise (0 at full width).

    `around`: the widths every *other* group holds while one group's curve is measured (the operating
    point, as NetAdapt measures sensitivity on the current network). Measured from the dense model, a
    curve misses that two neighbouring narrow groups hurt more than the sum of each alone; at aggressive
    budgets (0.15 of dense latency on the demo) that sent the knapsack to plans with adjacent groups at
    the floor. Default: the dense widths.
    """
    sizes = {g.id: g.size for g in analysis.groups}
    around = dict(around or sizes)
    values: dict[str, np.ndarray] = {}
    total = sum(len(_spread(g.candidates, POINTS)) for g in analysis.groups)
    cache: dict[tuple, float] = {}

    def loss_at(widths: dict[str, int]) -> float:
        key = tuple(sorted(widths.items()))
        if key not in cache:
            pruned = apply_plan(model, example_inputs, make_plan(widths, scores, sizes))
            cache[key] = _loss(recalibrate_bn(pruned, batches), batches, loss_fn)
        return cache[key]

    with tqdm(total=total, desc="sensitivity", unit="plan", disable=not progress, leave=False) as bar:
        for g in analysis.groups:
            pts = sorted(set(_spread(g.candidates, POINTS)) | {g.size})
            loss = {}
            for w in pts:
                loss[w] = loss_at({**around, g.id: w})
                bar.update(1)
            rise = {w: max(0.0, v - loss[g.size]) for w, v in loss.items()}
            xs = sorted(rise)
            # Narrower never costs less loss than wider: enforce a monotone curve against noise.
            ys = np.maximum.accumulate(np.array([rise[x] for x in xs])[::-1])[::-1]
            values[g.id] = -np.interp(g.candidates, xs, ys)
    return values
