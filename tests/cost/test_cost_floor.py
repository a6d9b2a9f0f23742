"""The cost model stays physical: no negative prediction, none below a measured plan it does not widen."""

import numpy as np
import torch
import torch.nn as nn

from hwprune.cost.curves import LayerCurve
from hwprune.cost.model import CostModel
from hwprune.groups.analysis import analyze


def _cost():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    analysis = analyze(model, torch.randn(2, 8))
    curves = {
        la.name: LayerCurve([1, la.in_channels], [1, la.out_channels], np.array([[1e-5, 1e-4], [1e-4, 1e-3]]))
        for la in analysis.layers
    }
    return CostModel(analysis, curves), analysis


def test_a_negative_remainder_fit_never_predicts_below_zero_or_a_narrower_measured_plan():
    cost, analysis = _cost()
    ids = [g.id for g in analysis.groups]
    dense = cost.dense_widths()
    narrow = {g: 2 for g in ids}
    cost.add_measurement(dense, 1e-4)  # far under the layer sum: the remainder fit goes strongly negative
    assert cost.r0 < 0 or cost.r1 < 0
    raw = cost.scale * cost.layer_sum(narrow) + cost.r0 + cost.r1 * cost.phi(narrow) + cost.r2 * cost.psi(narrow)
    assert raw < 0 == cost.predict(narrow) <= cost.physical(narrow)
    cost.add_measurement(narrow, 5e-5)
    half = {g: 16 for g in ids}
    assert cost.floor(half) == 5e-5 and cost.physical(half) >= 5e-5  # half is nowhere narrower than narrow
    assert cost.floor({g: 1 for g in ids}) == 0.0  # narrower than every measured plan: no floor
