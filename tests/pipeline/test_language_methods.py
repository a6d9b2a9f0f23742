"""Language-model methods through `hwprune.prune` and `hwprune prune`: magnitude / Wanda / SparseGPT block by block
on the run's calibration batches, ShortGPT layer removal, held-out perplexity in the report, one-line errors."""

import copy
import json

import pytest
import torch
import torch.nn as nn
from helpers import assert_one_line_error, one_thread, run_cli, tiny_llama

import hwprune
from hwprune.apply.layers import block_influence
from hwprune.apply.masks import get_masks
from hwprune.apply.sequential import METHODS, SequentialConfig, prune_sequential
from hwprune.core.data import LoaderData
from hwprune.core.errors import HwpruneError
from hwprune.pipeline.config import PruneConfig
from hwprune.pipeline.granularity import SEQUENTIAL
from hwprune.pipeline.language import batch_perplexity

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


VOCAB, SEQ = 50, 16
#: The formula target of conftest: nothing is timed (latency is not what these tests check).
QUIET = {"target": "analytic-test", "progress": False}


def tiny_lm(layers=3):
    return tiny_llama(hidden=32, layers=layers, head_dim=8, ffn=64, vocab=VOCAB, use_cache=True)


def lm_data(n_train=6, n_val=3, batch=4):
    g = torch.Generator().manual_seed(1)
    tr = [({"input_ids": torch.randint(0, VOCAB, (batch, SEQ), generator=g)}, None) for _ in range(n_train)]
    va = [({"input_ids": torch.randint(0, VOCAB, (batch, SEQ), generator=g)}, None) for _ in range(n_val)]
    return LoaderData(tr, va)


def example():
    return {"input_ids": torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(2))}


def test_the_pipeline_names_exactly_the_sequential_methods():
    assert set(SEQUENTIAL) == set(METHODS)


@pytest.mark.parametrize("criterion,granularity", [("sparsegpt", "unstructured"), ("wanda", "2:4")])
def test_prune_runs_the_sequential_method_on_the_calibration_batches(criterion, granularity):
    dense, data = tiny_lm(), lm_data()
    method = {"criterion": criterion, "granularity": granularity}
    if granularity == "unstructured":
        method["sparsity"] = 0.5
    res = hwprune.prune(dense, example(), data=data, method=method, config={"loop": {"calib_batches": 4}}, **QUIET)
    # the same masks and weights as prune_sequential on the run's first 4 training batches
    ref = copy.deepcopy(dense)
    pattern = "unstructured" if granularity == "unstructured" else granularity
    cfg = SequentialConfig(method=criterion, pattern=pattern, sparsity=0.5 if pattern == "unstructured" else None)
    masks = prune_sequential(ref, [x for x, _ in data.calibration(4)], cfg)
    got = get_masks(res.model)
    assert set(got) == set(masks) and len(masks) == 21  # 7 Linears in each of 3 decoder layers
    for name, keep in masks.items():
        assert torch.equal(got[name], keep)
        assert int(keep.sum()) == keep.numel() // 2
    for (n, a), (_, b) in zip(res.model.state_dict().items(), ref.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert float((res.model.lm_head.weight == 0).float().mean()) == 0.0  # output layer left dense
    # held-out perplexity, dense and pruned, in the report: equal to the same figure computed here
    ppl = res.report.method["perplexity"]
    assert ppl["dense"]["perplexity"] == pytest.approx(batch_perplexity(dense, data.validation()).perplexity)
    assert ppl["pruned"]["perplexity"] == pytest.approx(batch_perplexity(res.model, data.validation()).perplexity)
    assert ppl["dense"]["tokens"] == 3 * 4 * (SEQ - 1)
    assert any(n.startswith("held-out perplexity per token: dense") for n in res.report.notes)
    assert res.report.method["rounds"][0]["method"] == criterion
    assert res.report.weight_sparsity["overall"] > 0.3


def test_batch_perplexity_by_hand_and_padding_is_left_out():
    model = tiny_lm(1)
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits, -1)
    nll = -logp[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    got = batch_perplexity(model, [({"input_ids": ids}, None)])
    assert got.tokens == 10 and got.perplexity == pytest.approx(float(nll.double().mean().exp()), rel=1e-5)
    # the second row padded after 3 tokens: its last 3 targets do not count
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    got = batch_perplexity(model, [({"input_ids": ids, "attention_mask": mask}, None)])
    keep = torch.cat([nll[0], nll[1, :2]])
    assert got.tokens == 7 and got.perplexity == pytest.approx(float(keep.double().mean().exp()), rel=1e-5)


def test_shortgpt_removes_the_lowest_block_influence_layers(tmp_path):
    dense, data = tiny_lm(4), lm_data()
    with torch.no_grad():  # layer 1 adds nothing: block influence 0
        dense.model.layers[1].self_attn.o_proj.weight.zero_()
        dense.model.layers[1].mlp.down_proj.weight.zero_()
    bi = block_influence(dense, [x for x, _ in data.calibration(8)])
    res = hwprune.prune(dense, example(), data=data, method={"granularity": "layer", "sparsity": 0.5}, **QUIET)
    second = sorted(range(4), key=bi.__getitem__)[1]
    removed = res.report.method["rounds"][0]["removed"]
    assert set(removed) == {"model.layers.1", f"model.layers.{second}"}
    assert res.report.settings["criterion"] == "block-influence"
    assert res.model.config.num_hidden_layers == 2 and len(res.model.model.layers) == 2
    assert [m.self_attn.layer_idx for m in res.model.model.layers] == [0, 1]
    kept = [i for i in range(4) if f"model.layers.{i}" not in removed]
    for j, i in enumerate(kept):  # the kept layers' own weights, in order
        kept_w, dense_w = res.model.model.layers[j].mlp.up_proj.weight, dense.model.layers[i].mlp.up_proj.weight
        torch.testing.assert_close(kept_w, dense_w)
    assert res.report.method["perplexity"]["pruned"]["perplexity"] > 0
    # saved and rebuilt from the dense architecture by hwprune.load: the list is cut, the logits are the same
    res.save(tmp_path / "o")
    loaded = hwprune.load(tmp_path / "o" / "model", model=tiny_lm(4))
    assert loaded.config.num_hidden_layers == 2 and [m.self_attn.layer_idx for m in loaded.model.layers] == [0, 1]
    x = example()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, res.model(**x).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    "method,needle",
    [
        ({"criterion": "sparsegpt", "granularity": "channel", "sparsity": 0.5}, "--granularity unstructured"),
        ({"criterion": "sparsegpt", "granularity": "block4x1", "sparsity": 0.5}, "N:M (e.g. 2:4)"),
        ({"criterion": "magnitude", "granularity": "unstructured", "sparsity": 0.5, "schedule": "gradual"}, "one-shot"),
        ({"criterion": "sparsegpt", "granularity": "unstructured", "sparsity": 0.5, "scope": "global"}, "--scope"),
        ({"criterion": "l2", "granularity": "layer", "sparsity": 0.5}, "block-influence"),
        ({"criterion": "block-influence", "granularity": "channel", "sparsity": 0.5}, "--granularity layer"),
        ({"granularity": "layer"}, "--sparsity"),
    ],
)
def test_combinations_no_method_runs_are_refused_up_front(method, needle):
    with pytest.raises(HwpruneError, match=None) as e:
        PruneConfig.from_dict({"method": method})
    assert needle in str(e.value)


def test_sparsegpt_on_a_model_without_decoder_blocks_says_what_to_use():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(HwpruneError, match="has none: use --criterion l1"):
        hwprune.prune(model, torch.randn(2, 8), method={"criterion": "sparsegpt", "granularity": "2:4"}, **QUIET)


MODEL_FILE = """
import torch, transformers
from hwprune.core.data import LoaderData
from helpers import one_thread, tiny_llama

def build():
    cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   head_dim=8, intermediate_size=64, vocab_size=50)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval(), {"input_ids": torch.randint(0, 50, (1, 16))}

def data():
    g = torch.Generator().manual_seed(1)
    return LoaderData([({"input_ids": torch.randint(0, 50, (4, 16), generator=g)}, None) for _ in range(4)],
                      [({"input_ids": torch.randint(0, 50, (4, 16), generator=g)}, None) for _ in range(2)])
"""


@pytest.fixture
def lm_file(tmp_path):
    path = tmp_path / "lm.py"
    path.write_text(MODEL_FILE)
    return path


def test_cli_sparsegpt_two_of_four_writes_a_compressed_model_and_reports_perplexity(lm_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, "prune", "--model", f"{lm_file}:build", "--data", f"{lm_file}:data", "--granularity", "2:4",
        "--criterion", "sparsegpt", "--target", "analytic-test", "--quiet", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert "note: held-out perplexity per token: dense" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["perplexity"]["pruned"]["tokens"] == 2 * 4 * 15
    assert report["settings"]["method_kind"] == "weights" and report["settings"]["criterion"] == "sparsegpt"
    assert json.loads((out / "model" / "spec.json").read_text())["sparse"]  # masked weights saved compressed


def test_cli_layer_removal_writes_a_from_pretrained_directory(lm_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, "prune", "--model", f"{lm_file}:build", "--data", f"{lm_file}:data", "--granularity", "layer",
        "--sparsity", "0.5", "--target", "analytic-test", "--quiet", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(out / "pretrained")).eval()
    assert plain.config.num_hidden_layers == 1
    report = json.loads((out / "report.json").read_text())
    assert list(report["method"]["rounds"][0]["removed"]) in (["model.layers.0"], ["model.layers.1"])


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--granularity", "channel", "--criterion", "sparsegpt", "--sparsity", "0.5"], "--granularity unstructured"),
        (["--granularity", "layer", "--criterion", "taylor", "--sparsity", "0.5"], "block-influence"),
    ],
)
def test_cli_unknown_combinations_are_one_line_errors(lm_file, tmp_path, capsys, argv, needle):
    code, _, err = run_cli(capsys, "prune", "--model", f"{lm_file}:build", *argv, "--out", tmp_path / "o")
    assert_one_line_error(code, err, needle)
