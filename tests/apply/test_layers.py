"""ShortGPT depth pruning of a decoder LM: block influence, layer deletion, KV cache and from_pretrained."""

import copy

import pytest
import torch
from helpers import one_thread, tiny_llama

from hwprune.apply.layers import block_influence, find_layers, remove_layers, score_layers
from hwprune.core.errors import HwpruneError
from hwprune.export.pretrained import save_pretrained

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def tiny_lm(layers=4, seed=0):
    """A Llama of width 32 with `layers` decoder layers (4 query heads of 8 sharing 2 KV heads), seeded."""
    return tiny_llama(hidden=32, layers=layers, head_dim=8, ffn=64, vocab=50, use_cache=True, seed=seed)


def batches(n=3, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 50, (2, seq), generator=g)} for _ in range(n)]


def hidden_states(model, x):
    with torch.no_grad():
        return model(**x, output_hidden_states=True).hidden_states


def test_block_influence_is_one_minus_the_mean_token_cosine():
    model = tiny_lm()
    data = batches()
    bi = block_influence(model, data)
    expect = []
    for i in range(4):
        cos = torch.cat(
            [
                torch.nn.functional.cosine_similarity(hs[i].double(), hs[i + 1].double(), dim=-1).flatten()
                for hs in (hidden_states(model, x) for x in data)
            ]
        )
        expect.append(1 - float(cos.mean()))
    # hidden_states[4] is after the final norm in transformers: layer 3's own output is compared in the hook
    assert bi[:3] == pytest.approx(expect[:3], rel=1e-9)
    assert all(0 < b < 2 for b in bi)


def test_padding_does_not_count():
    model = tiny_lm()
    x = batches(1)[0]
    padded = {"input_ids": torch.cat([x["input_ids"], torch.zeros(2, 5, dtype=torch.long)], 1)}
    padded["attention_mask"] = torch.cat([torch.ones(2, 12), torch.zeros(2, 5)], 1).long()
    # causal attention: the real tokens' states do not depend on the padding after them
    assert block_influence(model, [padded]) == pytest.approx(block_influence(model, [x]), rel=1e-6)


def test_an_identity_like_layer_is_the_first_to_go():
    model = tiny_lm()
    with torch.no_grad():  # layer 2 adds nothing to the residual stream: its input is its output
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    names, scores = score_layers(model, "block-influence", batches())
    assert names == [f"model.layers.{i}" for i in range(4)]
    assert scores[2] == pytest.approx(0.0, abs=1e-12)
    assert min(range(4), key=scores.__getitem__) == 2 and min(s for i, s in enumerate(scores) if i != 2) > 1e-3


def test_removing_layers_keeps_the_kv_cache_and_equals_the_identity_model():
    model = tiny_lm()
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    ids = batches(1, seq=10)[0]["input_ids"]
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    pruned = remove_layers(copy.deepcopy(model), [1])
    assert pruned.config.num_hidden_layers == 3 and len(pruned.model.layers) == 3
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-5)
        # decoding with the KV cache: the cache holds 3 layers and the next-token logits match a full pass
        out = pruned(input_ids=ids[:, :-1], use_cache=True)
        step = pruned(input_ids=ids[:, -1:], cache=out.past_key_values, use_cache=True)
        assert len(out.past_key_values.layers) == 3
        torch.testing.assert_close(step.logits[:, -1], ref[:, -1], rtol=1e-5, atol=1e-5)
        gen = pruned.generate(ids[:1, :4], max_new_tokens=5, do_sample=False)
    assert gen.shape == (1, 9)


def test_a_layer_pruned_model_reloads_with_plain_from_pretrained(tmp_path):
    model = remove_layers(tiny_lm(), [0, 2])
    save_pretrained(model, tmp_path / "pretrained")
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "pretrained")).eval()
    assert plain.config.num_hidden_layers == 2 and len(plain.model.layers) == 2
    ids = batches(1)[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_layer_types_follow_the_kept_layers():
    model = tiny_lm()
    model.config.layer_types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    remove_layers(model, [0, 1])
    assert model.config.layer_types == ["full_attention", "sliding_attention"]


def test_bad_requests_are_one_line_errors():
    with pytest.raises(HwpruneError, match="no decoder layers"):
        find_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(HwpruneError, match="leaves no model"):
        remove_layers(tiny_lm(2), [0, 1])
    with pytest.raises(HwpruneError, match="needs calibration text"):
        score_layers(tiny_lm(2), "block-influence", [])
