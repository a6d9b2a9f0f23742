"""Selection rules: which units to remove, given their scores (stage "plan" without a hardware budget).

A rule sees *unit sets*: a name (a channel group, an attention layer's heads, a layer's weights) mapped to
one score per unit (higher = more important), and returns a keep-mask per set. The same rules serve every
granularity: channels, heads, blocks and weights. The hardware allocator (`budget`, allocate.py) is the
rule that sees costs as well as scores; `hierarchical` composes granularities (see methods.py).

- `ratio`: remove the `sparsity` fraction of lowest-scoring units, in each set (`scope="layer"`) or over
  all sets at once (`scope="global"`, scores must be comparable across sets: the pipeline normalises them).
- `threshold`: remove every unit whose score is below a fixed `threshold`.
- `mean-threshold`: remove every unit whose score is below the mean score of its set.

Every rule keeps at least `min_keep` units per set (default 1): an emptied layer disconnects the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hwprune.core.errors import HwpruneError
from hwprune.core.registry import Registry


@dataclass(frozen=True)
class Selection:
    name: str
    fn: Callable[..., dict[str, np.ndarray]]
    description: str


#: Score rules; `budget` (the hardware allocator) and `hierarchical` (levels of ratio rules) are methods of
#: the pipeline, registered here with no rule so that one registry lists and checks every selection.
SELECTIONS: Registry[Selection | None] = Registry("selection", "--selection")


def register_selection(name: str, description: str):
    def wrap(fn):
        SELECTIONS.register(name, Selection(name, fn, description), description)
        return fn

    return wrap


SELECTIONS.register(
    "budget", None, "the hardware allocator: widths that keep the most importance within the --budget on --target"
)
SELECTIONS.register(
    "hierarchical", None, "blocks first, then channels, then weights within what remains (each by --sparsity)"
)


def get_selection(name: str) -> Selection | None:
    return SELECTIONS.get(name)


def _keep_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask keeping the k highest scores (ties broken by position, so the result is deterministic)."""
    keep = np.zeros(len(scores), dtype=bool)
    if k > 0:
        keep[np.argsort(-scores, kind="stable")[:k]] = True
    return keep


def _floor(keep: np.ndarray, scores: np.ndarray, min_keep: int) -> np.ndarray:
    if keep.sum() >= min(min_keep, len(scores)):
        return keep
    return _keep_top(scores, min(min_keep, len(scores)))


def _check_sparsity(sparsity: float) -> None:
    if not 0 <= sparsity < 1:
        raise HwpruneError(f"--sparsity {sparsity}: the fraction of units to remove must be in [0, 1)")


@register_selection("ratio", "remove a fixed fraction (--sparsity) of the lowest-scoring units, per layer or global")
def select_ratio(
    scores: dict[str, np.ndarray], sparsity: float, scope: str = "layer", min_keep: int = 1, **_
) -> dict[str, np.ndarray]:
    _check_sparsity(sparsity)
    if scope == "layer":
        return {n: _floor(_keep_top(s, len(s) - int(sparsity * len(s))), s, min_keep) for n, s in scores.items()}
    if scope != "global":
        raise HwpruneError(f"scope '{scope}': use layer or global")
    names = list(scores)
    flat = np.concatenate([scores[n] for n in names])
    owner = np.concatenate([np.full(len(scores[n]), i) for i, n in enumerate(names)])
    keep_flat = _keep_top(flat, len(flat) - int(sparsity * len(flat)))
    out = {}
    for i, n in enumerate(names):
        out[n] = _floor(keep_flat[owner == i], scores[n], min_keep)
    return out


@register_selection("threshold", "remove every unit whose score is below a fixed value (--threshold)")
def select_threshold(
    scores: dict[str, np.ndarray], threshold: float | None = None, min_keep: int = 1, **_
) -> dict[str, np.ndarray]:
    if threshold is None:
        raise HwpruneError("selection 'threshold' needs a value: --threshold T (scores below T are removed)")
    return {n: _floor(s >= threshold, s, min_keep) for n, s in scores.items()}


@register_selection("mean-threshold", "remove every unit scoring below the mean score of its layer")
def select_mean_threshold(scores: dict[str, np.ndarray], min_keep: int = 1, **_) -> dict[str, np.ndarray]:
    return {n: _floor(s >= s.mean(), s, min_keep) for n, s in scores.items()}


def select(name: str, scores: dict[str, np.ndarray], **kwargs) -> dict[str, np.ndarray]:
    """Apply selection rule `name` to `scores`; returns a keep-mask per set."""
    rule = get_selection(name)
    if rule is None:
        raise HwpruneError(f"selection '{name}' is not a score rule; it runs in the pipeline (see methods.py)")
    return rule.fn({n: np.asarray(s, dtype=np.float64) for n, s in scores.items()}, **kwargs)


def list_selections() -> list[tuple[str, str]]:
    return sorted((name, SELECTIONS.describe(name)) for name in SELECTIONS)
