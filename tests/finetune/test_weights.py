"""Weight-level sparsity: pattern masks, keeping masks through fine-tuning, schedules, compressed save/load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from hwprune.apply.masks import (
    check_nm,
    sparsity_of,
)
from hwprune.core.data import Dataset
from hwprune.core.errors import HwpruneError
from hwprune.finetune.weights import WeightPruneConfig, gradual_sparsity, iterative_targets, prune_weights


def test_gradual_ramp_by_hand():
    # s_t = 0.9 + (0 - 0.9) * (1 - t / 100)^3
    assert gradual_sparsity(0, 0, 100, 0.9) == 0.0
    assert gradual_sparsity(50, 0, 100, 0.9) == pytest.approx(0.9 - 0.9 * 0.125)  # 0.7875
    assert gradual_sparsity(100, 0, 100, 0.9) == pytest.approx(0.9)
    assert gradual_sparsity(500, 0, 100, 0.9) == pytest.approx(0.9)
    assert gradual_sparsity(5, 10, 20, 0.9) == 0.0  # before the start: dense
    assert gradual_sparsity(15, 10, 20, 0.8, initial=0.4) == pytest.approx(0.8 - 0.4 * 0.125)  # 0.75
    assert gradual_sparsity(15, 10, 20, 0.8, power=1) == pytest.approx(0.4)
    with pytest.raises(HwpruneError):
        gradual_sparsity(0, 10, 10, 0.5)


def test_iterative_targets():
    assert iterative_targets(0.9, 1) == [pytest.approx(0.9)]
    t = iterative_targets(0.75, 2)
    assert t == [pytest.approx(0.5), pytest.approx(0.75)]  # each round removes half of what is left


def _toy_data(n=512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=g)
    y = (x[:, :4].argmax(1)).long()
    return Dataset("toy", x, y, x[:64], y[:64], 4, "toy")


def _toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


@pytest.mark.parametrize("schedule", ["one-shot", "iterative", "gradual"])
def test_schedules_reach_final_sparsity(schedule):
    model = _toy_model()
    res = prune_weights(model, _toy_data(), schedule=schedule, sparsity=0.9, epochs=2, batch_size=64, rounds=3, every=2)
    stats = sparsity_of(model)
    assert stats.layers["0"] == pytest.approx(0.9, abs=1e-3) and stats.layers["2"] == pytest.approx(0.9, abs=1e-3)
    assert stats.layers["4"] == 0.0  # head dense
    targets = [h["target"] for h in res.history]
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.9)
    if schedule == "iterative":
        assert targets == pytest.approx([1 - 0.1 ** (1 / 3), 1 - 0.1 ** (2 / 3), 0.9])
        assert [h["step"] for h in res.history] == [0, 6, 12]  # 16 steps in 3 chunks of 6, 6, 4
    if schedule == "gradual":
        assert len(res.history) > 3 and res.history[-1]["step"] == 12  # ramp over 75% of 16 steps
    # Nested masks: every weight pruned stays pruned, so the final count is exact after the last round.
    assert all(abs(h["actual"] - h["target"]) < 1e-3 for h in res.history)


def test_prune_weights_nm_with_criterion_and_teacher():
    model = _toy_model()
    teacher = copy.deepcopy(model)
    prune_weights(model, _toy_data(), pattern="2:4", criterion="taylor", epochs=1, batch_size=64, teacher=teacher)
    assert check_nm(model[0].weight, 2, 4) and check_nm(model[2].weight, 2, 4)
    assert model[0].hwprune_sparsity == "2:4"
    with pytest.raises(HwpruneError, match="fixed sparsity"):
        WeightPruneConfig(pattern="2:4", schedule="gradual")
    with pytest.raises(HwpruneError, match="schedule 'cubic'"):
        WeightPruneConfig(sparsity=0.5, schedule="cubic")
