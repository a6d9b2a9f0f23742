"""Recovery training: AdamW with a one-cycle schedule, distillation from the dense model when given."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from hwprune.core.data import Dataset
from hwprune.core.modules import logits

#: Hinton et al. 2015's soft-target temperature and the weight of the hard-label term (their MNIST setting).
KD_TEMPERATURE, KD_ALPHA = 4.0, 0.5


def kd_loss(
    out,
    y,
    teacher_out,
    alpha: float = KD_ALPHA,
    temperature: float = KD_TEMPERATURE,
    loss_fn: Callable | None = None,
    dim: int = 1,
):
    """alpha * loss(labels) + (1 - alpha) * T^2 * KL(teacher || student at temperature T) (Hinton et al. 2015).

    `loss_fn(outputs, targets)` defaults to cross-entropy. Without labels (`y` None) only the
    distillation term is left; without a teacher only the label term. `dim` holds the classes (1 for
    image classifiers and segmenters, -1 for transformers' (batch, tokens, classes) logits).
    """
    loss = None if y is None else (loss_fn or F.cross_entropy)(out, y)
    if teacher_out is None:
        return loss
    if dim != 1:  # classes last: flatten tokens into the batch, as KL's batchmean expects rows
        out, teacher_out = out.reshape(-1, out.shape[-1]), teacher_out.reshape(-1, teacher_out.shape[-1])
    kd = F.kl_div(F.log_softmax(out / temperature, 1), F.softmax(teacher_out / temperature, 1), reduction="batchmean")
    if loss is None:
        return kd * temperature**2
    return alpha * loss + (1 - alpha) * kd * temperature**2


def train_steps(
    model: nn.Module,
    batches: Iterable,
    lr: float,
    teacher: nn.Module | None = None,
    desc: str = "train",
    progress: bool = True,
    before_step=None,
    loss_fn: Callable | None = None,
) -> nn.Module:
    """One optimisation step per (inputs, targets) batch: AdamW with a one-cycle schedule, KD when `teacher`
    is given. `batches` needs a length (the schedule's total steps).

    `before_step(step, optimizer)`, if given, runs before each step (gradual pruning re-masks there).
    """
    if not len(batches):
        return model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(batches))
    if teacher is not None:
        teacher.eval()
    if getattr(model, "hwprune_output", None) == "embedding":
        teacher = None  # embeddings are not class scores: their targets (the dense embeddings) are the distillation
    dim = -1 if type(model).__module__.startswith("transformers.") else 1  # HF logits: (batch, tokens, classes)
    model.train()
    with tqdm(batches, desc=desc, unit="step", disable=not progress, leave=False) as bar:
        for step, (x, y) in enumerate(bar):
            if before_step is not None:
                before_step(step, opt)
                model.train()
            out = logits(model, x)
            with torch.no_grad():
                t = logits(teacher, x) if teacher is not None else None
            loss = kd_loss(out, y, t, loss_fn=loss_fn, dim=dim)
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
    loss_fn: Callable | None = None,
) -> nn.Module:
    """`epochs` passes over the training data in a seeded order (see `train_steps`)."""
    torch.manual_seed(seed)
    batches = data.epochs(epochs, batch_size, seed)
    return train_steps(model, batches, lr, teacher, desc, progress, loss_fn=loss_fn)
