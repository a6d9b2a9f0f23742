"""Built-in example models (`--model example:NAME`), trained on first use and cached."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import Dataset, get_dataset
from .errors import HwpruneError


class Mnist1dCNN(nn.Module):
    """A wide 1-D CNN for MNIST-1D.

    Width 256 keeps the model compute bound at the demo's batch of 64 on a 2-core CPU (each 3x1 conv is
    ~0.5-1 GFLOP there), so removing channels really removes time; narrow models are dominated by
    per-op overhead and barely speed up when pruned.
    """

    def __init__(self, width: int = 256, hidden: int = 256, num_classes: int = 10):
        super().__init__()

        def block(cin, cout, k, s):
            return nn.Sequential(nn.Conv1d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(1, width, 5, 1), block(width, width, 3, 2), block(width, width, 3, 1), block(width, width, 3, 2)
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(width * 10, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


@dataclass(frozen=True)
class Example:
    name: str
    build: Callable[[], nn.Module]
    data: str
    epochs: int
    description: str


EXAMPLES: dict[str, Example] = {
    "mnist1d": Example("mnist1d", Mnist1dCNN, "mnist1d", 12, "1-D CNN (4 convs of 256, 2 linears) on MNIST-1D"),
}


def get_example(name: str) -> Example:
    if name not in EXAMPLES:
        raise HwpruneError(f"unknown example '{name}'; choose one of: {', '.join(sorted(EXAMPLES))}")
    return EXAMPLES[name]


def kd_loss(out, y, teacher_out, alpha: float = 0.5, temperature: float = 4.0):
    """alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher || student at temperature T) (Hinton et al. 2015)."""
    loss = F.cross_entropy(out, y)
    if teacher_out is None:
        return loss
    kd = F.kl_div(F.log_softmax(out / temperature, 1), F.softmax(teacher_out / temperature, 1), reduction="batchmean")
    return alpha * loss + (1 - alpha) * kd * temperature**2


def train_steps(
    model: nn.Module,
    batches: list,
    lr: float,
    teacher: nn.Module | None = None,
    desc: str = "train",
    progress: bool = True,
    before_step=None,
) -> nn.Module:
    """One optimisation step per (x, y) batch: AdamW with a one-cycle schedule, KD when `teacher` is given.

    `before_step(step, optimizer)`, if given, runs before each step (gradual pruning re-masks there).
    """
    if not batches:
        return model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(batches))
    if teacher is not None:
        teacher.eval()
    model.train()
    with tqdm(batches, desc=desc, unit="step", disable=not progress, leave=False) as bar:
        for step, (x, y) in enumerate(bar):
            if before_step is not None:
                before_step(step, opt)
                model.train()
            out = model(x)
            with torch.no_grad():
                t = teacher(x) if teacher is not None else None
            loss = kd_loss(out, y, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return model


def train(
    model: nn.Module,
    data: Dataset,
    epochs: int,
    lr: float = 3e-3,
    batch_size: int = 128,
    seed: int = 0,
    teacher: nn.Module | None = None,
    desc: str = "train",
    progress: bool = True,
) -> nn.Module:
    """`epochs` passes over the training split in a seeded random order (see `train_steps`)."""
    torch.manual_seed(seed)
    return train_steps(model, epoch_batches(data, epochs, batch_size, seed), lr, teacher, desc, progress)


def epoch_batches(data: Dataset, epochs: int, batch_size: int = 128, seed: int = 0) -> list:
    """`epochs` passes over the training split, each in a seeded random order, as (x, y) batches."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        perm = torch.randperm(len(data.x_train), generator=g)
        for i in range(len(perm) // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            batches.append((data.x_train[idx], data.y_train[idx]))
    return batches


def trained_example(name: str, progress: bool = True) -> nn.Module:
    """The example's dense model, trained once and cached under the hwprune cache directory."""
    from .export import load, save_model
    from .hardware.table import default_cache_dir

    ex = get_example(name)
    tag = hashlib.sha1(json.dumps([name, ex.epochs, ex.data, "v1"]).encode()).hexdigest()[:8]
    path = default_cache_dir() / "examples" / f"{name}-{tag}"
    if (path / "spec.json").exists():
        try:
            return load(path)
        except HwpruneError:
            pass  # a damaged cache entry is rebuilt below
    data = get_dataset(ex.data)
    model = train(ex.build(), data, ex.epochs, desc=f"training dense {name}", progress=progress)
    save_model(model, path, {"kind": "example", "name": name})
    return model
