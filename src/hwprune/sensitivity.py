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
) -> dict[str, np.ndarray]:
    """Group id -> value per candidate width: minus the calibration loss rise (0 at full width)."""
    sizes = {g.id: g.size for g in analysis.groups}
    base = _loss(model, batches, loss_fn)
    values: dict[str, np.ndarray] = {}
    total = sum(len(_spread(g.candidates[:-1], POINTS - 1)) for g in analysis.groups)
    with tqdm(total=total, desc="sensitivity", unit="plan", disable=not progress, leave=False) as bar:
        for g in analysis.groups:
            pts = _spread(g.candidates[:-1], POINTS - 1)
            rise = {g.size: 0.0}
            for w in pts:
                plan = make_plan({g.id: w}, scores, sizes)
                pruned = recalibrate_bn(apply_plan(model, example_inputs, plan), batches)
                rise[w] = max(0.0, _loss(pruned, batches, loss_fn) - base)
                bar.update(1)
            xs = sorted(rise)
            # Narrower never costs less loss than wider: enforce a monotone curve against noise.
            ys = np.maximum.accumulate(np.array([rise[x] for x in xs])[::-1])[::-1]
            values[g.id] = -np.interp(g.candidates, xs, ys)
    return values
