"""Recovery training: AdamW with a one-cycle schedule, distillation from the dense model when given."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from hwprune.core.data import Dataset


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

