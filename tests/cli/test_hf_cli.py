"""`hwprune prune` on a transformers config: heads and FFN pruned, pretrained/ loads with plain transformers."""

import json

import pytest
import torch
from helpers import run_cli

from hwprune.zoo.specs import load_saved

transformers = pytest.importorskip("transformers")

LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 100,
}


def test_uniform_prune_of_a_gqa_llama_config_writes_a_from_pretrained_directory(tmp_path, capsys):
    (tmp_path / "llama.json").write_text(json.dumps(LLAMA))
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys,
        "prune",
        "--model",
        f"hf-config:{tmp_path / 'llama.json'}",
        "--seq-len",
        16,
        "--budget",
        "macs=0.6",
        "--allocator",
        "uniform",
        "--finetune-epochs",
        0,
        "--quiet",
        "--out",
        out,
    )
    assert code == 0, stdout
    hf = transformers.LlamaForCausalLM.from_pretrained(out / "pretrained")
    ours = load_saved(out / "model")
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-5)
    assert hf.config.intermediate_size < 128  # every layer's FFN at the same (pruned) width
    assert sum(p.numel() for p in hf.parameters()) < 0.8 * sum(
        p.numel() for p in transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).parameters()
    )
