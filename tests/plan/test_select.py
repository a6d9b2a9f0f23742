"""Selection rules on hand-made scores: exactly the units the rule names are removed."""

import numpy as np
import pytest

from hwprune.core.errors import HwpruneError
from hwprune.plan.select import list_selections, select

SCORES = {"a": np.array([0.1, 0.9, 0.5, 0.3]), "b": np.array([2.0, 0.05, 1.0])}


def test_ratio_per_layer_removes_the_lowest_fraction_of_each_set():
    keep = select("ratio", SCORES, sparsity=0.5)
    assert keep["a"].tolist() == [False, True, True, False]  # 2 of 4 removed: 0.1 and 0.3
    assert keep["b"].tolist() == [True, False, True]  # int(0.5 * 3) = 1 removed: 0.05


def test_ratio_global_ranks_all_units_together():
    keep = select("ratio", SCORES, sparsity=3 / 7, scope="global")
    # The 3 lowest of all 7 scores: 0.05 (b), 0.1 (a), 0.3 (a).
    assert keep["a"].tolist() == [False, True, True, False]
    assert keep["b"].tolist() == [True, False, True]


def test_global_ratio_keeps_at_least_one_unit_per_set():
    keep = select(
        "ratio", {"lo": np.array([0.01, 0.02]), "hi": np.array([5.0, 6.0, 7.0])}, sparsity=0.6, scope="global"
    )
    assert keep["lo"].sum() == 1 and keep["lo"][1]  # the better of the two survives
    assert keep["hi"].tolist() == [False, True, True]  # int(0.6 * 5) = 3 lowest overall: 0.01, 0.02, 5.0


def test_threshold_removes_exactly_the_units_below_it():
    keep = select("threshold", SCORES, threshold=0.4)
    assert keep["a"].tolist() == [False, True, True, False]
    assert keep["b"].tolist() == [True, False, True]


def test_mean_threshold_picks_exactly_the_units_below_the_mean():
    keep = select("mean-threshold", SCORES)
    # mean(a) = 0.45: 0.1 and 0.3 are below; mean(b) = 1.0167: 0.05 and 1.0 are below.
    assert keep["a"].tolist() == [False, True, True, False]
    assert keep["b"].tolist() == [True, False, False]


@pytest.mark.parametrize(
    "name,kwargs,msg",
    [("ratio", {"sparsity": 1.0}, "must be in [0, 1)"), ("threshold", {}, "needs a value"), ("nope", {}, "unknown")],
)
def test_errors(name, kwargs, msg):
    with pytest.raises(HwpruneError, match=msg.replace("[", r"\[").replace(")", r"\)")):
        select(name, SCORES, **kwargs)


def test_listing_names_every_rule():
    names = [n for n, _ in list_selections()]
    assert names == sorted(["ratio", "threshold", "mean-threshold", "budget", "hierarchical"])
