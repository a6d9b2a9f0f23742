"""Budgets beyond latency: parsing, exact counts, per-layer curves, and the pipeline meeting them."""

import importlib.util

import pytest
import torch
import torch.nn as nn

import hwprune
from hwprune.apply.channels import apply_plan
from hwprune.cost.resources import count, figure_cost_model, memory_bytes, peak_activation_bytes
from hwprune.groups.analysis import analyze
from hwprune.importance import compute_scores
from hwprune.plan.plan import make_plan


def test_peak_activation_and_memory_by_hand():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    x = torch.randn(4, 10)
    # Leaf calls: Linear(10->20): (40 + 80) floats; ReLU: (80 + 80); Linear(20->5): (80 + 20). Peak 160 floats.
    assert peak_activation_bytes(model, x) == 160 * 4
    weights = (10 * 20 + 20 + 20 * 5 + 5) * 4
    assert memory_bytes(model, x) == weights + 160 * 4
    assert count("params", model, x) == 10 * 20 + 20 + 20 * 5 + 5
    assert count("macs", model, x) == 4 * (10 * 20 + 20 * 5)


def test_param_and_mac_curves_are_exact(tiny_file):
    spec = importlib.util.spec_from_file_location("tiny_models", tiny_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model, x = mod.mlp()
    analysis = analyze(model, x)
    for kind in ("params", "macs"):
        cost = figure_cost_model(kind, analysis, model, x)
        dense = count(kind, model, x)
        assert cost.predict(cost.dense_widths()) == pytest.approx(dense)
        # A narrower plan: the per-layer curves are bilinear in (in, out), so the prediction is exact when
        # nothing but the conv/linear layers changes (an MLP without norms).
        widths = {g.id: g.candidates[len(g.candidates) // 3] for g in analysis.groups}
        scores = compute_scores(model, analysis, "l1", [])
        pruned = apply_plan(model, x, make_plan(widths, scores, cost.sizes, cost.analysis.multiples))
        assert cost.layer_sum(widths) == pytest.approx(count(kind, pruned, x))


class DenseBlock(nn.Module):
    """DenseNet's pattern: each conv reads the concatenation of every earlier output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 8, 3, padding=1)
        self.b = nn.Conv2d(24, 8, 3, padding=1)
        self.c = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        f = torch.cat([s, torch.relu(self.a(s))], 1)
        f = torch.cat([f, torch.relu(self.b(f))], 1)
        return self.fc(torch.relu(self.c(f)).mean((2, 3)))


def test_a_concatenated_input_is_the_sum_of_its_parts_and_macs_are_exact():
    torch.manual_seed(0)
    model, x = DenseBlock().eval(), torch.randn(2, 3, 8, 8)
    analysis = analyze(model, x)
    layers = {la.name: la for la in analysis.layers}
    assert sorted(layers["b"].in_parts) == [("a", 8, 1), ("stem", 16, 1)]
    assert set(layers["c"].in_groups) == {"stem", "a", "b"}
    widths = {"stem": 5, "a": 3, "b": 6, "c": 9}
    assert layers["c"].widths(widths) == (5 + 3 + 6, 9)
    cost = figure_cost_model("macs", analysis, model, x)
    scores = compute_scores(model, analysis, "l1", [])
    pruned = apply_plan(model, x, make_plan(widths, scores, cost.sizes, cost.analysis.multiples))
    # Read as one group's width times in_channels / its size, c's input was 32 / 8 x b's width: 24, not 14.
    assert cost.layer_sum(widths) == pytest.approx(count("macs", pruned, x))


def test_a_dense_block_prunes_to_its_mac_budget():
    torch.manual_seed(0)
    model, x = DenseBlock().eval(), torch.randn(2, 3, 8, 8)
    res = hwprune.prune(model, x, budget="macs=0.5", target="analytic-test", progress=False)
    used = count("macs", res.model, x) / (0.5 * count("macs", model, x))
    assert 0.97 <= used <= 1.0


def test_the_incremental_prediction_equals_the_full_one():
    # The allocators' local search predicts plans one or two groups away from a base through `around`; every
    # fitted term (r0, r1 on activations, r2 on weights, a scale) and concatenated inputs must agree with predict.
    torch.manual_seed(0)
    model, x = DenseBlock().eval(), torch.randn(2, 3, 8, 8)
    analysis = analyze(model, x)
    cost = figure_cost_model("macs", analysis, model, x)
    cost.r0, cost.r1, cost.r2, cost.scale = 1e4, 3e5, -2e5, 1.3
    base = {"stem": 9, "a": 5, "b": 4, "c": 11}
    near = cost.around(base)
    for changes in ({}, {"stem": 3}, {"a": 8, "c": 2}, {"b": 1, "stem": 16}, {"c": 16}):
        assert near(changes) == pytest.approx(cost.predict({**base, **changes}), rel=1e-12)
    assert near({"stem": 3}) != pytest.approx(near({}))
