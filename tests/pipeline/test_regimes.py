"""Causal language models budgeted in a latency regime: `--budget prefill=...` / `decode=...`."""

import pytest
import torch
from helpers import tiny_llama

import hwprune
from hwprune.core.budget import parse_budgets
from hwprune.core.data import LoaderData
from hwprune.core.errors import HwpruneError
from hwprune.hardware.regime import DecodeTarget, decode_inputs
from hwprune.hardware.targets import get_target
from hwprune.report.text import summary_rows


@pytest.fixture
def llama():
    pytest.importorskip("transformers")
    model = tiny_llama(hidden=256, head_dim=64, ffn=1024, vocab=64, use_cache=True)
    return model, {"input_ids": torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(0))}


def test_regime_budgets_parse_as_latency_and_round_trip():
    (b,) = parse_budgets("decode=0.7")
    assert (b.kind, b.regime, b.value, b.relative) == ("latency", "decode", 0.7, True)
    (b,) = parse_budgets(parse_budgets("prefill=3ms")[0].to_text())
    assert (b.kind, b.regime, b.value, b.relative) == ("latency", "prefill", pytest.approx(0.003), False)
    with pytest.raises(HwpruneError, match="give one \\(prefill= or decode=\\)"):
        parse_budgets("prefill=0.6,decode=0.7")


def test_a_decode_step_is_the_next_token_against_the_context_and_repeats(llama):
    model, x = llama
    target = DecodeTarget(get_target("cpu"), x["input_ids"])
    step = target.step(model, decode_inputs(x))
    with torch.no_grad():
        full = model(input_ids=torch.cat([x["input_ids"], x["input_ids"][:, -1:]], 1)).logits[:, -1:]
        first, again = step(**decode_inputs(x)), step(**decode_inputs(x))
    assert torch.allclose(first, full, atol=1e-5) and torch.equal(first, again)  # the cache went back to 24
    assert step.cache.get_seq_length() == 24
    assert target.device_key().endswith("-decode24") and target.fingerprint()["regime"] == "decode@24"


def test_decode_budget_plans_on_one_token_and_reports_both_regimes(llama):
    model, x = llama
    res = hwprune.prune(model, x, budget="decode=0.8", target="analytic-test", progress=False)
    r = res.report
    assert r.budget.met and r.budgets[0].text == "decode=0.8"
    decode, prefill = sorted(r.regimes, key=lambda f: f.regime)
    assert (decode.budgeted, prefill.budgeted) == (True, False)
    assert decode.call == "batch 2, 1 token per sequence, context 24" and prefill.call == "batch 2 x 24 tokens"
    assert decode.ratio <= 0.8 and decode.ratio == pytest.approx(r.latency_ratio)
    # The analytic target charges 10 ps per MAC: prefill runs 24 tokens where decode runs 1.
    assert prefill.dense_ms > 5 * decode.dense_ms
    assert r.macs_ratio < 1 and res.model(**x).logits.shape == (2, 24, 64)


def test_regime_budgets_refuse_what_is_not_a_causal_language_model():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(HwpruneError, match="not a causal language model"):
        hwprune.prune(model, torch.randn(2, 8), budget="decode=0.5", target="analytic-test", progress=False)


def test_decode_is_timed_only_where_the_model_runs_in_this_process(llama):
    model, x = llama
    with pytest.raises(HwpruneError, match="timed on cpu only"):
        DecodeTarget(get_target("sim:jetson-orin-nano"), x["input_ids"])


def test_a_causal_lm_run_reports_held_out_perplexity_one_shot_and_after_fine_tuning(llama):
    model, x = llama
    gen = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 64, (4, 24), generator=gen)} for _ in range(6)]
    data = LoaderData(batches[:4], batches[4:])  # unlabelled: fine-tuning distils from the dense model
    res = hwprune.prune(model, x, budget="prefill=0.7", target="analytic-test", data=data, finetune=1, progress=False)
    d, p = res.report.dense, res.report.pruned
    # Random weights on random tokens: about the vocabulary size (64) dense, and a number for each stage.
    assert 32 < d.perplexity < 128 and p.perplexity > 1 and p.perplexity_oneshot > 1
    assert p.perplexity != p.perplexity_oneshot  # fine-tuning moved the model
    row = [r for r in summary_rows(res.report) if r[0] == "perplexity per token, held out"]
    assert row == [(row[0][0], f"{d.perplexity:.3f}", f"{p.perplexity:.3f} (one-shot {p.perplexity_oneshot:.3f})")]
