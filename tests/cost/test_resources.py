"""Budgets beyond latency: parsing, exact counts, per-layer curves, and the pipeline meeting them."""

import pytest
import torch
import torch.nn as nn

from hwprune.cost.resources import count, figure_cost_model, memory_bytes, peak_activation_bytes
from hwprune.groups.analysis import analyze


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
    import importlib.util

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
        from hwprune.apply.channels import apply_plan
        from hwprune.importance import compute_scores
        from hwprune.plan.plan import make_plan

        widths = {g.id: g.candidates[len(g.candidates) // 3] for g in analysis.groups}
        scores = compute_scores(model, analysis, "l1", [])
        pruned = apply_plan(model, x, make_plan(widths, scores, cost.sizes, cost.analysis.multiples))
        assert cost.layer_sum(widths) == pytest.approx(count(kind, pruned, x))
