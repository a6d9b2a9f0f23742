"""Stage 2: a score per channel of each group, from a criterion found by name in a registry.

Every criterion scores the parameter slices a channel owns in every layer of its group (the root's
filters, the BN entries, the consumers' input columns) and the group's score is the *sum* over those
slices (Torch-Pruning's default group reduction; Molchanov et al. 2019 sum Taylor terms the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import HwpruneError
from .groups import GroupAnalysis, _forward


@dataclass(frozen=True)
class Criterion:
    """A named scoring rule. `needs_grad`: it back-propagates calibration batches.

    `comparable`: its scores are in the same units in every group (a loss change), so allocators may
    compare channels across groups as they are; otherwise each group's scores are divided by their mean.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (param slice, grad slice) -> per element
    needs_grad: bool
    comparable: bool
    description: str


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, needs_grad: bool, comparable: bool, description: str):
    """Decorator: add an element-wise scoring function to the registry under `name`."""

    def wrap(fn):
        CRITERIA[name] = Criterion(name, fn, needs_grad, comparable, description)
        return fn

    return wrap


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise HwpruneError(f"unknown criterion '{name}'; choose one of: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


@register_criterion("l1", needs_grad=False, comparable=False, description="sum of |w| over a channel's weights")
def _l1(w, g):
    return w.abs()


@register_criterion("l2", needs_grad=False, comparable=False, description="sum of w^2 over a channel's weights")
def _l2(w, g):
    return w.pow(2)


@register_criterion(
    "taylor",
    needs_grad=True,
    comparable=True,
    description="first-order Taylor |w * dL/dw| on calibration batches (Molchanov et al. 2019)",
)
def _taylor(w, g):
    return (w * g).abs()


@register_criterion("random", needs_grad=False, comparable=True, description="uniform random scores (a baseline)")
def _random(w, g):
    return torch.rand_like(w)


def _channel_slices(module: nn.Module, side: str, idxs: list[int]) -> Iterable[tuple[torch.Tensor, int]]:
    """(parameter, channel dim) pairs that a channel owns in `module` on the given side."""
    for pname in ("weight", "bias"):
        p = getattr(module, pname, None)
        if not isinstance(p, nn.Parameter):
            continue
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            if side == "out" or depthwise:
                yield p, 0
            elif pname == "weight":
                yield p, 1
        elif side == "out" and p.dim() >= 1:  # norms, PReLU: one entry per channel
            yield p, 0


def compute_scores(
    model: nn.Module,
    analysis: GroupAnalysis,
    criterion: str,
    calibration: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Score every channel of every group; returns group id -> scores (float64, one per channel)."""
    crit = get_criterion(criterion)
    torch.manual_seed(seed)
    grads: dict[nn.Parameter, torch.Tensor] = {}
    if crit.needs_grad:
        if not calibration:
            raise HwpruneError(f"criterion '{criterion}' needs calibration data; pass --data or choose l1/l2")
        was_training = model.training
        model.eval()
        model.zero_grad(set_to_none=True)
        loss_fn = loss_fn or F.cross_entropy
        for x, y in calibration:
            loss = loss_fn(_forward(model, x), y)
            loss.backward()
        grads = {p: p.grad.detach().clone() for p in model.parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        model.train(was_training)

    scores: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for g in analysis.groups:
            total = torch.zeros(g.size, dtype=torch.float64)
            for dep, idxs in analysis.tp_groups[g.id]:
                module = dep.target.module
                if not isinstance(module, nn.Module):
                    continue
                side = "out" if analysis.graph.is_out_channel_pruning_fn(dep.handler) else "in"
                root_idxs = torch.as_tensor(dep_root_idxs(dep, idxs, analysis.tp_groups[g.id]))
                local = torch.as_tensor(list(idxs))
                for p, dim in _channel_slices(module, side, list(idxs)):
                    if p.shape[dim] <= int(local.max()):
                        continue
                    grad = grads.get(p)
                    if crit.needs_grad and grad is None:
                        continue
                    w = p.detach().index_select(dim, local)
                    gsl = grad.index_select(dim, local) if grad is not None else None
                    per = crit.fn(w.double(), gsl.double() if gsl is not None else None)
                    per = per.transpose(0, dim).reshape(len(local), -1).sum(1)
                    total.index_add_(0, root_idxs, per)
            scores[g.id] = total.numpy()
    return scores


def dep_root_idxs(dep, idxs, group) -> list[int]:
    """Indices of the root channels that `idxs` of this dependency map back to (concat/split aware)."""
    for item in group.items:
        if item.dep is dep:
            return list(item.root_idxs)
    return list(idxs)


def normalized(scores: dict[str, np.ndarray], criterion: str) -> dict[str, np.ndarray]:
    """Scores made comparable across groups (see `Criterion.comparable`)."""
    if get_criterion(criterion).comparable:
        return scores
    return {k: v / max(float(v.mean()), 1e-12) for k, v in scores.items()}
