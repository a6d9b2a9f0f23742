"""The criterion registry: what a criterion is, how one is found by name, and the element-wise rules.

A `Criterion` scores units of a model (channels, attention heads, residual blocks) or single weights;
its `granularities` say which. Element criteria (`l1`, `l2`, `redundancy`, `gradient`, `taylor`,
`hessian`, `wanda`, `random`) give a score per parameter entry, which `hwprune.importance.scores` sums
over the slices a unit owns or keeps per weight. Unit criteria, measured on a group's output, are in
`hwprune.importance.units`. Higher scores are always more important.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.registry import Registry
from hwprune.groups.analysis import GroupAnalysis

CHANNEL, HEAD, BLOCK, WEIGHT = "channel", "head", "block", "weight"
ALL_GRANULARITIES = (CHANNEL, HEAD, BLOCK, WEIGHT)

#: Calibration data: (inputs, labels) batches.
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Stats:
    """What an element-wise criterion may read for one parameter (or one slice of it).

    grad: dL/dw of the mean calibration loss; grad_sq: mean over batches of the per-batch (dL/dw)^2;
    xnorm: for Conv/Linear weights, the L2 norm of the input column each weight multiplies (Wanda), of
    the weight's shape; None where a statistic was not collected or does not apply (biases, norms).
    """

    grad: torch.Tensor | None = None
    grad_sq: torch.Tensor | None = None
    xnorm: torch.Tensor | None = None
    generator: torch.Generator | None = None

    def select(self, dim: int, idx: torch.Tensor) -> Stats:
        """The statistics of the entries `idx` along `dim` (one channel's slice), in float64."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return t.index_select(dim, idx.to(t.device)).double() if t is not None else None

        return Stats(pick(self.grad), pick(self.grad_sq), pick(self.xnorm), self.generator)


ElementFn = Callable[[torch.Tensor, Stats, dict], torch.Tensor]
UnitFn = Callable[[nn.Module, GroupAnalysis, Batches, Callable, dict], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Criterion:
    """A named scoring rule.

    `element`: per-entry score of a parameter (weight level, and summed over slices at channel level);
    `finish`: optional map applied to a unit's summed slices (redundancy's saturation); `unit`: a rule
    that scores a group's channels directly (measured on outputs), for criteria with no per-weight form.
    `needs`: statistics it reads: "grad", "grad_sq", "xnorm" (all need calibration data) or "data".
    `comparable`: its scores are in the same units in every group (a loss change, a fraction), so
    allocators may compare channels across groups as they are; otherwise each group's scores are divided
    by their mean. `params`: the parameters it takes, with their defaults.
    """

    name: str
    description: str
    granularities: tuple[str, ...]
    aggregation: str
    comparable: bool
    needs: frozenset[str] = frozenset()
    params: dict[str, float] = field(default_factory=dict)
    element: ElementFn | None = None
    finish: Callable[[torch.Tensor, dict], torch.Tensor] | None = None
    unit: UnitFn | None = None

    @property
    def needs_grad(self) -> bool:
        return bool(self.needs & {"grad", "grad_sq"})

    @property
    def needs_data(self) -> bool:
        return bool(self.needs)


CRITERIA: Registry[Criterion] = Registry("criterion", "--criterion")


def register_criterion(
    name: str,
    *,
    description: str,
    comparable: bool,
    needs: Iterable[str] = (),
    granularities: Iterable[str] = ALL_GRANULARITIES,
    params: dict[str, float] | None = None,
    finish: Callable[[torch.Tensor, dict], torch.Tensor] | None = None,
    unit: bool = False,
):
    """Decorator: add a criterion under `name`.

    The decorated function is an element rule `fn(w, stats, params) -> per-entry scores` or, with
    `unit=True`, a unit rule `fn(model, analysis, batches, loss_fn, params) -> {group id: scores}`. Its
    docstring states how a unit's score comes from its group and becomes the criterion's `aggregation`.
    """

    def wrap(fn):
        crit = Criterion(
            name,
            description,
            tuple(granularities),
            " ".join((fn.__doc__ or "").split()),
            comparable,
            frozenset(needs),
            dict(params or {}),
            None if unit else fn,
            finish,
            fn if unit else None,
        )
        CRITERIA.register(name, crit, description)
        return fn

    return wrap


def get_criterion(name: str) -> Criterion:
    return CRITERIA.get(name)


def list_criteria() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, one-line description, granularities) of every registered criterion, sorted by name."""
    return [(c.name, c.description, c.granularities) for c in sorted(CRITERIA.values(), key=lambda c: c.name)]


def resolve_params(crit: Criterion, params: dict | None) -> dict:
    """The criterion's parameters: its defaults overridden by `params` (e.g. `{"lambda": 0.5}`).

    Unknown names, non-positive values and fractional values of whole-number parameters are HwpruneErrors.
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(crit.params))
    if unknown:
        takes = ", ".join(f"{k} (default {v})" for k, v in crit.params.items()) or "no parameters"
        raise HwpruneError(f"criterion '{crit.name}' has no parameter '{unknown[0]}'; it takes {takes}")
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise HwpruneError(f"criterion '{crit.name}' parameter '{k}' must be a positive number, got {v!r}")
        if isinstance(crit.params[k], int) and int(v) != v:
            raise HwpruneError(f"criterion '{crit.name}' parameter '{k}' must be a whole number, got {v!r}")
    return {**crit.params, **params}


# --- element criteria (channel level: summed over slices; weight level: as they are) -------------------


@register_criterion("l1", description="magnitude |w|", comparable=False)
def _l1(w, s, p):
    """Channel: sum of |w| over every parameter slice the channel owns in its group. Weight: |w|."""
    return w.abs()


@register_criterion("l2", description="squared magnitude w^2", comparable=False)
def _l2(w, s, p):
    """Channel: sum of w^2 over every parameter slice the channel owns in its group. Weight: w^2."""
    return w.pow(2)


@register_criterion(
    "redundancy",
    description="neuron redundancy r_i = S_i / (S_i + lambda), S_i = sum of the unit's squared weights",
    comparable=True,  # dimensionless, in [0, 1) in every group
    granularities=(CHANNEL, HEAD),
    # lambda = 1: PyTorch's default init (uniform in +-1/sqrt(fan_in)) gives a unit S ~ 1/3 per fan-in
    # side, so r sits in its unsaturated range (~0.25-0.5) instead of at 0 or 1.
    params={"lambda": 1.0},
    finish=lambda total, p: total / (total + p["lambda"]),
)
def _redundancy(w, s, p):
    """S_i = sum of w^2 over every parameter slice unit i owns in its group (incoming row, bias, norm
    entries, outgoing column), then r_i = S_i / (S_i + lambda). Units only: r saturates per unit."""
    return w.pow(2)


@register_criterion(
    "gradient", description="gradient sensitivity |dL/dw| on calibration batches", comparable=False, needs={"grad"}
)
def _gradient(w, s, p):
    """Channel: sum of |dL/dw| over the channel's slices. Weight: |dL/dw| (L: mean calibration loss)."""
    return s.grad.abs() if s.grad is not None else None


@register_criterion(
    "taylor",
    description="first-order Taylor |w * dL/dw| on calibration batches (Molchanov et al. 2019)",
    comparable=True,
    needs={"grad"},
)
def _taylor(w, s, p):
    """Channel: sum of |w * dL/dw| over the channel's slices. Weight: |w * dL/dw|."""
    return (w * s.grad).abs() if s.grad is not None else None


@register_criterion(
    "hessian",
    description="OBD saliency 1/2 F_ii w^2, F = diagonal Fisher from per-batch gradients (LeCun et al. 1990)",
    comparable=True,  # a predicted loss change, like taylor
    needs={"grad_sq"},
)
def _hessian(w, s, p):
    """Channel: sum of 1/2 F_ii w_i^2 over the channel's slices (OBD's saliencies add under the diagonal
    approximation). Weight: 1/2 F_ii w_i^2, F_ii = mean over batches of (dL_b/dw_i)^2."""
    # OBD's diagonal Hessian approximated by the empirical Fisher: mean over batches of squared gradients.
    return 0.5 * s.grad_sq * w.pow(2) if s.grad_sq is not None else None


@register_criterion(
    "wanda",
    description="|W_ij| * ||X_j||_2, X_j the input column a weight multiplies (Sun et al. 2023; conv: im2col column)",
    comparable=False,
    needs={"xnorm"},
)
def _wanda(w, s, p):
    """Channel: sum of |W_ij| * ||X_j|| over the channel's Conv/Linear weight slices (its filters and the
    consumers' input columns); biases and norm entries multiply no input and add 0. Weight: |W_ij| *
    ||X_j||, X_j the input column weight ij multiplies (conv: channel c at kernel offset k, over every
    output position and sample, i.e. the im2col column)."""
    return w.abs() * s.xnorm if s.xnorm is not None else torch.zeros_like(w)


@register_criterion("random", description="uniform random scores (a baseline)", comparable=True)
def _random(w, s, p):
    """Channel: sum of uniform [0, 1) draws over the channel's slices. Weight: a uniform [0, 1) draw."""
    return torch.rand(w.shape, generator=s.generator, dtype=torch.float64).to(w.device)
