"""Stage 2: importance scores, from a criterion found by name in one registry.

- `criteria`: `Criterion`, the registry (`register_criterion`, `get_criterion`, `list_criteria`) and the
  element-wise rules (l1, l2, redundancy, gradient, taylor, hessian, wanda, random);
- `stats`: the statistics criteria read (gradients, input column norms, group output statistics),
  gathered in hooked passes over calibration batches;
- `units`: the rules measured on a whole group's output (activation, apoz, loss-change);
- `fluctuation`: FLAP's input-variance importance, measured on the layers that read a group;
- `scores`: scores per channel of every coupled group (`compute_scores`), per weight (`weight_scores`),
  and made comparable across groups (`normalized`).

Importing any of them registers every criterion (this package imports `units`).
"""

from hwprune.importance import fluctuation, units  # noqa: F401  (register the unit criteria)
from hwprune.importance.criteria import (
    ALL_GRANULARITIES,
    BLOCK,
    CHANNEL,
    CRITERIA,
    HEAD,
    WEIGHT,
    Batches,
    Criterion,
    Stats,
    get_criterion,
    list_criteria,
    register_criterion,
    resolve_params,
)
from hwprune.importance.scores import compute_scores, normalized, weight_scores
from hwprune.importance.stats import CollectedStats, collect_stats, dep_root_idxs

__all__ = [
    "ALL_GRANULARITIES",
    "BLOCK",
    "CHANNEL",
    "CRITERIA",
    "HEAD",
    "WEIGHT",
    "Batches",
    "CollectedStats",
    "Criterion",
    "Stats",
    "collect_stats",
    "compute_scores",
    "dep_root_idxs",
    "get_criterion",
    "list_criteria",
    "normalized",
    "register_criterion",
    "resolve_params",
    "weight_scores",
]
