import json

import pytest
import torch
from helpers import uniformly_pruned
from tiny_models import tiny_resnet

from hwprune.apply.channels import apply_plan
from hwprune.core.errors import HwpruneError
from hwprune.plan.plan import GroupPlan, Plan


def test_plan_round_trip(tmp_path):
    _, _, plan, _ = uniformly_pruned(tiny_resnet)
    plan.predicted_latency_s = 0.0123
    plan.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json")
    assert again == plan
    assert json.loads((tmp_path / "plan.json").read_text())["format"] == "hwprune-plan/1"


def test_plan_reapplied_gives_same_model(tmp_path):
    model, x, plan, pruned = uniformly_pruned(tiny_resnet)
    plan.save(tmp_path / "plan.json")
    again = apply_plan(model, x, Plan.load(tmp_path / "plan.json"))
    torch.testing.assert_close(again(x), pruned(x))


def test_plan_validation():
    with pytest.raises(ValueError):
        GroupPlan("a", 4, 5, [0, 1, 2, 3, 4])
    with pytest.raises(HwpruneError):
        Plan.from_dict({"groups": []})
