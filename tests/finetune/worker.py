"""A fine-tuning run in its own process (the SIGKILL and torchrun tests): the toy task of conftest.py,
final weights written to OUT as safetensors by rank 0.

    python worker.py OUT [--ckpt DIR] [--resume] [--steps-per-s N] [--no-bn] [--batch-size B] [--epochs E]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import toy_data, toy_net  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import hwprune.finetune.trainer as trainer  # noqa: E402
from hwprune.finetune import distributed  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--slow", type=float, default=0.0, help="seconds of sleep per step (time to be killed)")
    p.add_argument("--no-bn", action="store_true")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    a = p.parse_args()
    torch.set_num_threads(1)
    distributed.setup("cpu")
    if a.slow:
        orig = trainer.kd_loss

        def slow(*args, **kw):
            time.sleep(a.slow)
            return orig(*args, **kw)

        trainer.kd_loss = slow
    model = toy_net(bn=not a.no_bn)
    if a.no_bn:
        model[3].p = 0.0
    cfg = trainer.TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=1e-2, checkpoint_every=1, device="cpu")
    res = trainer.fit(
        model, toy_data(), cfg, teacher=toy_net(seed=3), checkpoint_dir=a.ckpt, resume=a.resume, progress=False
    )
    if distributed.world().main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, a.out)
        print(f"steps {res.steps} resumed_at {res.resumed_at} processes {res.processes}", flush=True)


if __name__ == "__main__":
    main()
