"""DistributedDataParallel under torchrun (2 gloo processes on CPU) against one process, same total batch."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent


def _run(out, nproc: int | None, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = (launcher if nproc else [sys.executable]) + [str(HERE / "worker.py"), str(out), *map(str, args)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_two_gloo_processes_train_the_model_one_process_trains(tmp_path):
    """Each process takes half of every batch of 32 (DistributedSampler); DDP averages the gradients, so
    without BatchNorm (whose statistics are per process) and dropout the weights match one process's."""
    args = ("--no-bn", "--batch-size", 32, "--epochs", 2)
    out2 = _run(tmp_path / "two.safetensors", 2, *args, "--ckpt", tmp_path / "ck")
    _run(tmp_path / "one.safetensors", None, *args)
    assert "processes 2" in out2 and "steps 24" in out2
    assert out2.count("steps") == 1  # rank 0 alone reports and writes
    two, one = load_file(tmp_path / "two.safetensors"), load_file(tmp_path / "one.safetensors")
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=2e-5, rtol=1e-4)
    assert (tmp_path / "ck" / "latest").read_text() == "step-00000024"  # rank 0 checkpointed
