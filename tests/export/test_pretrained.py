"""Uniformly pruned transformers models as plain save_pretrained directories; per-layer plans through hwprune."""

import pytest
import torch
from helpers import tiny_llama

from hwprune.apply.channels import apply_plan
from hwprune.core.errors import HwpruneError
from hwprune.export.model import save_model
from hwprune.export.pretrained import save_pretrained
from hwprune.groups.analysis import analyze
from hwprune.importance import compute_scores
from hwprune.plan.plan import make_plan
from hwprune.zoo.hf import hf_source
from hwprune.zoo.specs import load_saved

transformers = pytest.importorskip("transformers")

IDS = {"input_ids": torch.randint(5, 100, (2, 8), generator=torch.Generator().manual_seed(0))}


def vit():
    cfg = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(cfg).eval()


def pruned(model, x, frac):
    """Heads and FFN widths cut; `frac(group)` gives each group's kept fraction. The residual stream stays."""
    a = analyze(model, x)
    groups = [g for g in a.groups if g.unit > 1 or "mlp" in g.id or "intermediate" in g.id]
    widths = {g.id: int(g.size * frac(g)) for g in groups}
    plan = make_plan(widths, compute_scores(model, a, "l1"), {g.id: g.size for g in groups}, units=a.units)
    return apply_plan(model, x, plan)


def out(model, x):
    with torch.no_grad():
        return (model(**x) if isinstance(x, dict) else model(x)).logits


@pytest.mark.parametrize(("build", "x"), [(tiny_llama, IDS), (vit, torch.randn(2, 3, 32, 32))])
def test_uniform_plan_reloads_with_plain_from_pretrained(tmp_path, build, x):
    model = build()
    small = pruned(model, x, lambda g: 0.5)
    save_pretrained(small, tmp_path / "hf")
    back = type(model).from_pretrained(tmp_path / "hf")  # transformers alone: no hwprune code involved
    assert torch.allclose(out(back, x), out(small, x), atol=1e-5)
    assert back.config.num_attention_heads == 2 and back.config.intermediate_size == 48
    assert sum(p.numel() for p in back.parameters()) < sum(p.numel() for p in model.parameters())


def test_per_layer_widths_are_refused_for_save_pretrained_and_load_through_hwprune(tmp_path):
    model = tiny_llama()
    small = pruned(model, IDS, lambda g: 0.5 if g.id.startswith("model.layers.0") else 1.0)
    with pytest.raises(HwpruneError, match="different head counts"):
        save_pretrained(small, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    save_model(small, tmp_path / "hw", hf_source(model))
    back = load_saved(tmp_path / "hw")  # rebuilt from the stored config: no code from the directory
    assert torch.allclose(out(back, IDS), out(small, IDS), atol=1e-5)
