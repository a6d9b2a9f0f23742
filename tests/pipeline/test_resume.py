"""`hwprune.prune(..., resume=DIR)`: a run killed while fine-tuning continues from its checkpoint directory,
prunes nothing again, and ends with the weights an uninterrupted run ends with."""

import json

import pytest
import torch
from helpers import mlp3, mlp3_batches

import hwprune
import hwprune.finetune.trainer as trainer
import hwprune.pipeline.api as api
from hwprune.core.errors import HwpruneError

X = torch.randn(4, 12)


def _prune(**kw):
    ft = {"epochs": 3, "batch_size": 16, "checkpoint_every": 2, **kw.pop("ft", {})}
    return hwprune.prune(
        mlp3(), X, budget="params=0.6", target="analytic-test", data=mlp3_batches(), finetune=ft, progress=False, **kw
    )


def _kill_at(monkeypatch, call: int):
    orig, calls = trainer.kd_loss, [0]

    def boom(*a, **k):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(trainer, "kd_loss", boom)
    return lambda: monkeypatch.setattr(trainer, "kd_loss", orig)


def test_resume_prunes_nothing_again_and_ends_equal(tmp_path, monkeypatch):
    whole = _prune()
    ck = tmp_path / "ck"
    restore = _kill_at(monkeypatch, 10)  # step 10 of 18, in epoch 2
    with pytest.raises(KeyboardInterrupt):
        _prune(ft={"checkpoint_dir": str(ck)})
    restore()
    assert json.loads((ck / "run.json").read_text())["config"]["finetune"]["epochs"] == 3
    assert (ck / "stage" / "model" / "model.safetensors").exists() and (ck / "latest").read_text() == "step-00000008"

    class NoPruning:
        def get(self, kind):
            raise AssertionError("a resumed run pruned again")

    monkeypatch.setattr(api, "METHODS", NoPruning())
    resumed = _prune(resume=ck)
    assert resumed.plan.widths() == whole.plan.widths()
    for (k, v), w in zip(resumed.model.state_dict().items(), whole.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    t = resumed.report.training
    assert t.resumed_from == str(ck) and t.steps == 18 and t.epochs == 3 and t.processes == 1
    assert resumed.report.loop and resumed.report.groups  # the pruning sections, read back
    assert whole.report.training.resumed_from is None and whole.report.training.samples_per_s > 0


def test_a_run_killed_while_pruning_prunes_again_on_resume(tmp_path, monkeypatch):
    ck = tmp_path / "ck"

    def killed(run):
        raise KeyboardInterrupt

    real = api.METHODS
    monkeypatch.setattr(api, "METHODS", type("M", (), {"get": lambda self, kind: killed})())
    with pytest.raises(KeyboardInterrupt):
        _prune(ft={"checkpoint_dir": str(ck)})
    assert (ck / "run.json").exists() and not (ck / "stage").exists()
    monkeypatch.setattr(api, "METHODS", real)
    r = _prune(resume=ck)
    assert r.report.training.steps == 18 and r.report.training.resumed_from is None


def test_resume_refuses_a_missing_directory_or_other_settings_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(HwpruneError, match="no such directory"):
        _prune(resume=tmp_path / "nope")
    ck = tmp_path / "ck"
    _prune(ft={"checkpoint_dir": str(ck)})
    monkeypatch.setattr(api, "_setup", lambda *a: pytest.fail("refused too late"))
    with pytest.raises(HwpruneError, match=r"started with finetune.epochs=3, this one has 4"):
        _prune(resume=ck, ft={"epochs": 4})
    (ck / "run.json").write_text("{not json")
    with pytest.raises(HwpruneError, match="run.json is damaged"):
        _prune(resume=ck)


def test_bad_fine_tuning_settings_are_refused_before_pruning(monkeypatch):
    monkeypatch.setattr(api, "METHODS", type("M", (), {"get": lambda self, kind: pytest.fail("pruned first")})())
    with pytest.raises(HwpruneError, match=r"no module of the model has this name.*\(--kd-features\)"):
        _prune(ft={"kd_features": "0,body.9"})
    with pytest.raises(HwpruneError, match=r"finetune.optimizer 'adam'.*\(--optimizer\)"):
        _prune(ft={"optimizer": "adam"})
    if not torch.cuda.is_available():
        with pytest.raises(HwpruneError, match=r"needs a CUDA GPU.*\(--precision\)"):
            _prune(ft={"precision": "fp16"})
