"""example:tinylm: a byte-level GQA Llama, its corpus split, a training smoke run, and its spec resolution."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hwprune.zoo import tinylm  # noqa: E402
from hwprune.zoo.examples import get_example  # noqa: E402


def test_builds_a_gqa_llama_of_about_0_85m_parameters():
    m = tinylm.build()
    assert type(m).__name__ == "LlamaForCausalLM"
    assert m.config.num_attention_heads == 4 and m.config.num_key_value_heads == 2
    assert 0.8e6 < sum(p.numel() for p in m.parameters()) < 0.9e6
    out = m(input_ids=torch.zeros(2, 16, dtype=torch.long)).logits
    assert out.shape == (2, 16, 256)
    assert get_example("tinylm").trainer is tinylm.train


def test_bytes_round_trip_and_the_tokenizer_pads_and_masks():
    assert tinylm.decode(tinylm.encode("héllo")) == "héllo"
    enc = tinylm.ByteTokenizer()(["ab", "abcd"], padding="longest", truncation=True, max_length=3)
    assert enc["input_ids"].tolist() == [[97, 98, 0], [97, 98, 99]]
    assert enc["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    m = tinylm.build()
    ids = tinylm.encode("The quick brown fox jumps over the lazy dog. " * 40)
    (x, y), *_ = tinylm.lm_batches(ids, 1, 4, 32, seed=1)
    with torch.no_grad():
        before = float(tinylm.lm_loss(m(**x).logits, y))
    tinylm.train(m, progress=False, steps=12, batch_size=2, ids=ids)
    with torch.no_grad():
        after = float(tinylm.lm_loss(m(**x).logits, y))
    assert before == pytest.approx(5.545, abs=0.1)  # ln 256: an untrained model is near uniform over bytes
    assert after < before - 1.5


def test_held_out_text_is_apart_and_the_prompt_is_its_start():
    train, held = tinylm.corpus()
    assert len(train) > 1_000_000 and len(held) > 30_000
    assert tinylm.decode(held[5000:5200]) not in tinylm.decode(train)
    x = tinylm.prompt_inputs(3, 64)
    assert x["input_ids"].shape == (3, 64) and torch.equal(x["input_ids"][2], held[:64])


def test_default_loss_reads_the_vocabulary_dimension_of_a_language_model():
    from hwprune.core.modules import default_loss  # noqa: PLC0415

    m = tinylm.build()
    x = torch.randint(0, 256, (2, 256))  # tokens == vocabulary: dim 1 would silently be the tokens
    out = m(input_ids=x).logits
    y = out.argmax(-1)
    want = torch.nn.functional.cross_entropy(out.reshape(-1, 256), y.reshape(-1))
    torch.testing.assert_close(default_loss(m)(out, y), want)
    assert not torch.allclose(torch.nn.functional.cross_entropy(out, y), want)
    assert default_loss(torch.nn.Linear(2, 2)) is torch.nn.functional.cross_entropy


def test_model_spec_resolves_to_the_prompt_and_the_byte_tokenizer(monkeypatch):
    import hwprune.zoo.specs as specs  # noqa: PLC0415

    monkeypatch.setattr(specs, "trained_example", lambda name, progress=True: tinylm.build())  # no training here
    r = specs.resolve("example:tinylm", batch_size=2, seq_len=32)
    assert r.example_inputs["input_ids"].shape == (2, 32)
    assert isinstance(r.tokenizer, tinylm.ByteTokenizer) and r.source == {"kind": "example", "name": "tinylm"}
