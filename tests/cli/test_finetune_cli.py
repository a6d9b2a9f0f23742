"""`hwprune prune` fine-tuning flags: bad settings refused in one line before pruning; a run interrupted
while fine-tuning resumed with --resume OUT.ckpt; the report's training section."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, run_cli

import hwprune.finetune.trainer as trainer
import hwprune.pipeline.api as api

HERE = Path(__file__).parent.parent


def _argv(out, *extra):
    return [
        *("prune", "--model", f"{HERE}/tiny_models.py:digits_resnet", "--data", "digits", "--target", "analytic-test"),
        *("--budget", "params=0.6", "--finetune-epochs", "2", "--quiet", "--out", out, *extra),
    ]


@pytest.fixture
def no_pruning(monkeypatch):
    monkeypatch.setattr(api, "METHODS", type("M", (), {"get": lambda self, kind: pytest.fail("pruned first")})())


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--optimizer", "adam"], "choose one of: adamw, sgd (--optimizer)"),
        (["--lr-schedule", "linear"], "(--lr-schedule)"),
        (["--kd-features", "stem.0,block9"], "'block9': no module of the model has this name"),
        (["--accumulate", "0"], "(--accumulate)"),
        (["--kd-alpha", "1.5"], "(--kd-alpha)"),
        (["--resume", "/nonexistent/ck"], "--resume /nonexistent/ck: no such directory"),
    ],
)
def test_bad_settings_are_one_line_before_pruning(tmp_path, capsys, no_pruning, extra, needle):
    code, _, err = run_cli(capsys, *_argv(tmp_path / "out", *extra))
    assert_one_line_error(code, err, needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no GPU")
def test_fp16_without_a_gpu_is_one_line_before_pruning(tmp_path, capsys, no_pruning):
    code, _, err = run_cli(capsys, *_argv(tmp_path / "out", "--precision", "fp16"))
    assert_one_line_error(code, err, "needs a CUDA GPU")


def test_interrupted_then_resumed_from_out_ckpt(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    orig, calls = trainer.kd_loss, [0]

    def boom(*a, **k):
        calls[0] += 1
        if calls[0] == 20:  # in epoch 2 (each of the 2 epochs has at least 10 steps of 128 digits)
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(trainer, "kd_loss", boom)
    code, _, err = run_cli(capsys, *_argv(out, "--checkpoint-every", "5", "--keep-best"))
    assert code == 130 and not out.exists()
    ck = Path(str(out) + ".ckpt")
    assert (ck / "run.json").exists() and (ck / "stage").is_dir() and (ck / "latest").exists()
    monkeypatch.setattr(trainer, "kd_loss", orig)
    code, _, err = run_cli(capsys, *_argv(out, "--checkpoint-every", "5", "--keep-best"))
    assert_one_line_error(code, err, f"continue it with --resume {ck}")
    code, stdout, err = run_cli(capsys, *_argv(out, "--checkpoint-every", "5", "--keep-best", "--resume", ck))
    assert code in (0, 1), err
    assert f"resumed from {ck}" in err and "fine-tuning (KD): epoch 2/2" in err
    r = json.loads((out / "report.json").read_text())
    t = r["training"]
    assert t["resumed_from"] == str(ck) and t["epochs"] == 2 and t["processes"] == 1 and t["best_step"] is not None
    assert t["optimizer"] == "adamw" and t["schedule"] == "one-cycle" and t["precision"] == "fp32"
    assert len(t["seconds_per_epoch"]) == 2  # epoch 1's seconds come from the checkpoint
    assert not ck.exists()  # the default checkpoints go once the outputs are written


def test_a_run_that_finishes_removes_its_default_checkpoints(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *_argv(out, "--lr-schedule", "cosine", "--warmup-steps", "3"))
    assert code in (0, 1), err
    t = json.loads((out / "report.json").read_text())["training"]
    assert t["schedule"] == "cosine" and t["samples_per_s"] > 0 and len(t["seconds_per_epoch"]) == 2
    assert not Path(str(out) + ".ckpt").exists()
    assert err.count("fine-tuning (KD): epoch") == 2  # stderr is no terminal: one line per epoch


def test_torchrun_two_processes_rank_0_prunes_and_writes(tmp_path):
    """The same command under torchrun: rank 0 prunes and sends the model, both ranks fine-tune (gloo), and
    only rank 0 writes OUT and prints the summary."""
    out = tmp_path / "out"
    env = {**os.environ, "HWPRUNE_TIMING": "fast", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hwprune"]
    argv = ["prune", "--model", f"{HERE}/tiny_models.py:digits_resnet", "--data", "digits", "--budget", "params=0.6"]
    argv += ["--finetune-epochs", "1", "--quiet", "--out", str(out)]  # target cpu: analytic-test is this process's
    res = subprocess.run(launcher + argv, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    assert res.stdout.count("wrote ") == 1
    t = json.loads((out / "report.json").read_text())["training"]
    assert t["processes"] == 2 and t["steps"] == 11 and t["batch_size"] == 128  # 1,437 digits: 11 steps of 128
    assert not Path(str(out) + ".ckpt").exists()
