"""Attention heads of transformers models: found by structure, cut whole (KV heads with their query groups)."""

import numpy as np
import pytest
import torch
from helpers import tiny_llama

from hwprune.apply.channels import apply_plan
from hwprune.core.errors import HwpruneError
from hwprune.groups.analysis import analyze
from hwprune.groups.attention import find_attention
from hwprune.plan.plan import GroupPlan, Plan, make_plan

transformers = pytest.importorskip("transformers")

IDS = {"input_ids": torch.randint(5, 100, (2, 8), generator=torch.Generator().manual_seed(0))}


def tiny_bert():
    cfg = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=100
    )
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def test_heads_are_found_by_structure_with_their_kv_share():
    att = find_attention(tiny_llama())
    a = att["model.layers.0.self_attn.q_proj"]
    assert (a.heads, a.kv_heads, a.head_dim, a.per_kv, a.unit) == (4, 2, 16, 2, 32)
    assert a.kv_channels(list(range(32, 64))) == list(range(16, 32))  # KV head 1 serves query heads 2 and 3
    b = find_attention(tiny_bert())["encoder.layer.0.attention.self.query"]
    assert (b.o, b.heads, b.kv_heads) == ("encoder.layer.0.attention.output.dense", 4, 4)


def test_analysis_of_a_gqa_llama_finishes_with_head_groups():
    a = analyze(tiny_llama(), IDS)  # torch-pruning's own group search does not return on this model
    heads = [g for g in a.groups if g.unit > 1]
    assert [g.id for g in heads] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert all(g.candidates == [32, 64] for g in heads)  # whole KV units of 2 query heads x 16
    k = next(la for la in a.layers if la.name == "model.layers.0.self_attn.k_proj")
    assert k.out_group == heads[0].id and k.widths({heads[0].id: 32}) == (64, 16)


@pytest.mark.parametrize("build", [tiny_llama, tiny_bert])
def test_removing_heads_equals_zeroing_their_output_columns(build):
    """A dropped head contributes nothing: the pruned model computes what the dense one does with that head's
    out-projection columns zeroed (its KV head goes with it under GQA)."""
    model = build()
    a = analyze(model, IDS)
    g = next(g for g in a.groups if g.unit > 1)
    keep = list(range(g.unit, g.size))  # drop the first KV unit
    plan = Plan([GroupPlan(g.id, g.size, len(keep), keep)])
    pruned = apply_plan(model, IDS, plan)
    att = find_attention(model)[g.id]
    modules = dict(model.named_modules())
    with torch.no_grad():
        modules[att.o].weight[:, : g.unit] = 0
        want = model(**IDS)[0]
        got = pruned(**IDS)[0]
    assert torch.allclose(got, want, atol=1e-5)
    pm = dict(pruned.named_modules())
    assert pm[att.q].out_features == g.size - g.unit
    assert pm[att.k].out_features == (att.kv_heads - 1) * att.head_dim


def test_a_plan_that_splits_a_head_is_refused():
    model = tiny_bert()
    a = analyze(model, IDS)
    g = next(g for g in a.groups if g.unit > 1)
    keep = list(range(1, g.size))
    with pytest.raises(HwpruneError, match="part of a head"):
        apply_plan(model, IDS, Plan([GroupPlan(g.id, g.size, len(keep), keep)]))


def test_make_plan_keeps_the_best_whole_blocks():
    scores = {"q": np.array([1, 1, 9, 9, 5, 5, 0, 0], float)}
    plan = make_plan({"q": 5}, scores, {"q": 8}, units={"q": 2})
    assert plan.groups[0].keep == [2, 3, 4, 5]  # width rounded down to whole blocks, the two best blocks
