"""Checkpoints: atomic, pickle-free round trips, and a resumed run that ends where an uninterrupted one does,
also after a SIGKILL."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import accuracy, toy_data, toy_net
from safetensors.torch import load_file

import hwprune.finetune.trainer as trainer
from hwprune.core.errors import HwpruneError
from hwprune.finetune import checkpoint as ckpt
from hwprune.finetune.trainer import TrainConfig, fit

HERE = Path(__file__).parent


def test_save_keeps_only_the_newest_and_leaves_no_temporary(tmp_path):
    for step in (3, 7):
        ckpt.save(tmp_path, step, {"w": torch.full((2, 2), float(step))}, {"note": step})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000007"]
    tensors, meta = ckpt.load(tmp_path)
    assert meta["step"] == 7 and meta["note"] == 7 and torch.equal(tensors["w"], torch.full((2, 2), 7.0))


def test_no_checkpoint_yet_is_none_and_a_damaged_one_is_refused_in_one_line(tmp_path):
    assert ckpt.load(tmp_path) is None
    where = ckpt.save(tmp_path, 1, {"w": torch.zeros(64)}, {})
    data = (where / ckpt.STATE_TENSORS).read_bytes()
    (where / ckpt.STATE_TENSORS).write_bytes(data[: len(data) // 2])  # cut short
    with pytest.raises(HwpruneError, match="damaged") as e:
        ckpt.load(tmp_path)
    assert "\n" not in str(e.value)


def test_a_checkpoint_holds_no_pickle(tmp_path):
    model = toy_net()
    fit(model, toy_data(), TrainConfig(epochs=1, batch_size=64), checkpoint_dir=tmp_path, progress=False)
    files = sorted(p.name for p in (tmp_path / (tmp_path / "latest").read_text()).iterdir())
    assert files == ["state.json", "state.safetensors"]
    meta = json.loads((tmp_path / (tmp_path / "latest").read_text() / "state.json").read_text())
    assert meta["position"]["epoch"] == 1 and meta["position"]["batch"] == 0 and meta["step"] == 6


def test_rng_states_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    tensors, meta = ckpt.rng_state()
    meta = json.loads(json.dumps(meta))  # as stored
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    ckpt.set_rng_state(tensors, meta)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _interrupted(monkeypatch, at_call: int):
    """Make the `at_call`-th loss computation raise, as a Ctrl-C would."""
    orig, calls = trainer.kd_loss, [0]

    def boom(*a, **k):
        calls[0] += 1
        if calls[0] == at_call:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(trainer, "kd_loss", boom)
    return lambda: monkeypatch.setattr(trainer, "kd_loss", orig)


def _loader_data():
    d = toy_data()
    ds = torch.utils.data.TensorDataset(d.x_train, d.y_train)
    return torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True)


@pytest.mark.parametrize("source", ["tensors", "loader"])
@pytest.mark.parametrize("kill_at", [16, 25])  # mid-epoch 2 (checkpoints every 5 steps), and after epoch 2 ends
def test_resume_ends_equal_to_an_uninterrupted_run(tmp_path, monkeypatch, source, kill_at):
    data = toy_data() if source == "tensors" else None
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-2, checkpoint_every=5, keep_best=True, device="cpu")
    kw = dict(teacher=toy_net(seed=3), evaluate=accuracy(toy_data()), progress=False)
    whole = toy_net()
    r_whole = fit(whole, data or _loader_data(), cfg, **kw)
    restore = _interrupted(monkeypatch, kill_at)
    with pytest.raises(KeyboardInterrupt):
        fit(toy_net(), data or _loader_data(), cfg, checkpoint_dir=tmp_path, **kw)
    restore()
    resumed = toy_net(seed=7)  # other initial weights: everything comes from the checkpoint
    r = fit(resumed, data or _loader_data(), cfg, checkpoint_dir=tmp_path, resume=True, **kw)
    assert r.resumed_at == {16: 15, 25: 24}[kill_at]
    assert [(e.step, e.metric) for e in r.evaluations] == [(e.step, e.metric) for e in r_whole.evaluations]
    assert r.best_step == r_whole.best_step and r.steps == r_whole.steps == 36
    for (k, v), w in zip(resumed.state_dict().items(), whole.state_dict().values(), strict=True):
        assert torch.equal(v, w), k  # bit-identical


def test_resume_with_other_settings_is_refused(tmp_path):
    fit(toy_net(), toy_data(), TrainConfig(epochs=1, batch_size=64), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(HwpruneError, match=r"finetune.lr=0.001, this run has 0.01"):
        fit(
            toy_net(),
            toy_data(),
            TrainConfig(epochs=1, batch_size=64, lr=1e-2),
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )


def _worker(out, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [sys.executable, str(HERE / "worker.py"), str(out), *map(str, args)], env


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    ck = tmp_path / "ck"
    cmd, env = _worker(tmp_path / "killed.safetensors", "--ckpt", ck, "--slow", "0.05")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    step = 0
    while time.monotonic() < deadline and proc.poll() is None:  # wait for a checkpoint inside epoch 2
        try:
            step = int((ck / "latest").read_text().split("-")[1])
        except (OSError, IndexError, ValueError):
            step = 0
        if step >= 15:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "killed.safetensors").exists()
    cmd, env = _worker(tmp_path / "resumed.safetensors", "--ckpt", ck, "--resume")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    resumed_at = int(out.stdout.split("resumed_at ")[1].split()[0])
    assert 15 <= resumed_at < 48
    cmd, env = _worker(tmp_path / "whole.safetensors")
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 0
    a, b = load_file(tmp_path / "resumed.safetensors"), load_file(tmp_path / "whole.safetensors")
    for k in b:
        assert torch.equal(a[k], b[k]), k
