"""Recovery training as a stage of its own: `fit(model, data, TrainConfig(...))` -> `FitResult`.

Epochs or steps; AdamW or SGD; one-cycle, cosine or step learning rate with warm-up; gradient
accumulation and clipping; evaluation every N steps with the caller's metric, keep-best and early
stopping; distillation from the dense model on logits (Hinton et al. 2015) and on named intermediate
features (`distill`); bf16 autocast (CPU, CUDA) and fp16 with a GradScaler (CUDA).

Atomic checkpoints (`checkpoint`) every N steps and at each epoch's end hold the model, optimizer,
scheduler, scaler, every RNG and the data position; `resume=True` continues from the newest one and ends
where an uninterrupted run ends. Each epoch's batch order is a function of (seed, epoch) alone (`batches`),
so a resumed epoch replays the same batches and the same code runs one process or N under `torchrun`
(`distributed`): DistributedDataParallel, gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from hwprune.core.data import as_data
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call, primary_output
from hwprune.finetune import checkpoint as ckpt
from hwprune.finetune import distributed
from hwprune.finetune.batches import EpochBatches, batch_len, to_device
from hwprune.finetune.config import (
    ONE_CYCLE_PCT,
    SGD_MOMENTUM,
    STEP_GAMMA,
    STEP_MILESTONES,
    TrainConfig,
    TrainConfigError,
    check_features,
    resolve_device,
)
from hwprune.finetune.distill import FeatureDistiller, Student
from hwprune.finetune.train import kd_loss

__all__ = ["FitResult", "TrainConfig", "TrainConfigError", "check_features", "fit", "resolve_device", "to_device"]


@dataclass
class Evaluation:
    step: int
    epoch: int
    metric: float


@dataclass
class FitResult:
    """What fine-tuning did: steps and epochs run, throughput, evaluations, the step kept."""

    model: nn.Module
    steps: int
    epochs: int
    processes: int
    #: Training samples per second over all processes (forward, backward and step; not evaluation or checkpoints).
    samples_per_s: float
    samples: int = 0
    seconds_per_epoch: list[float] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    best_step: int | None = None
    best_metric: float | None = None
    stopped_early_at: int | None = None
    #: The optimizer step the run resumed at (None: it started from the beginning).
    resumed_at: int | None = None
    final_loss: float | None = None


def _optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=SGD_MOMENTUM, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _schedule(config: TrainConfig, opt: torch.optim.Optimizer, total: int):
    warm = min(config.warmup_steps, total)
    if config.lr_schedule == "one-cycle":
        pct = warm / total if warm else ONE_CYCLE_PCT
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=pct)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if config.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        if config.lr_schedule == "step":
            return STEP_GAMMA ** sum(step >= m * total for m in STEP_MILESTONES)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class _Position:
    """Where the run is, and what it has seen: all of it goes into each checkpoint's JSON."""

    epoch: int = 0
    batch: int = 0  # batches of `epoch` consumed
    step: int = 0  # optimizer steps taken
    samples: int = 0
    train_s: float = 0.0
    epoch_s: float = 0.0  # seconds of the current epoch so far
    seconds_per_epoch: list = field(default_factory=list)
    evaluations: list = field(default_factory=list)
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early_at: int | None = None
    loss: float | None = None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: TrainConfig fields a resumed run may change: they do not alter the trajectory of the weights.
_RESUMABLE_CHANGES = {"checkpoint_every", "device"}


def _check_same_config(saved: dict, config: TrainConfig, where) -> None:
    for key, value in config.to_dict().items():
        if key in _RESUMABLE_CHANGES or key not in saved:
            continue
        if saved[key] != value:
            raise HwpruneError(
                f"{where}: the checkpoint was written with finetune.{key}={saved[key]!r}, this run has {value!r}; "
                "resume with the same settings"
            )


class _Loop:
    """One fine-tuning run: the objects it trains, its position, and the steps that move it on."""

    def __init__(self, model: nn.Module, data, config: TrainConfig, teacher, loss_fn, evaluate, checkpoint_dir):
        self.config, self.loss_fn, self.evaluate_fn = config, loss_fn, evaluate
        self.checkpoint_dir = checkpoint_dir
        self.world = distributed.world()
        self.device = resolve_device(config)
        check_features(model, config.kd_features)
        if config.kd_features and teacher is None:
            raise TrainConfigError("kd_features", ",".join(config.kd_features), "feature distillation needs a teacher")
        self.model, self.home = model, next((p.device for p in model.parameters()), torch.device("cpu"))
        # Embeddings are not class scores: their targets (the dense embeddings) are the distillation, and the
        # teacher runs only for its features (kd_features), if any.
        self.kd_logits = getattr(model, "hwprune_output", None) != "embedding"
        if not (self.kd_logits or config.kd_features):
            teacher = None
        self.teacher = teacher
        self.teacher_home = next((p.device for p in teacher.parameters()), None) if teacher is not None else None
        model.to(self.device)
        if teacher is not None:
            teacher.to(self.device).eval()
        self.batches = EpochBatches(data, config.batch_size, config.seed, self.world)
        per_epoch = math.ceil(len(self.batches) / config.accumulate)
        self.total = config.steps or config.epochs * per_epoch
        self.n_epochs = math.ceil(self.total / per_epoch)
        self.features = None
        if config.kd_features:
            sample = to_device(next(self.batches.epoch(0))[0], self.device)
            self.features = FeatureDistiller(model, teacher, config.kd_features, sample, self.device)
        self.student = Student(model, self.features.adapters if self.features else nn.ModuleDict())
        self.opt = _optimizer(config, [p for p in self.student.parameters() if p.requires_grad])
        self.sched = _schedule(config, self.opt, max(1, self.total))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        hf = type(model).__module__.startswith("transformers.")
        self.dim = -1 if hf else 1  # the class dimension: transformers' logits are (batch, tokens, classes)
        self.wrapped: nn.Module = self.student
        if self.world.distributed:
            ids = [self.device] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        self.pos = _Position()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.restored: tuple | None = None

    def restore(self) -> int | None:
        """Continue from the newest checkpoint (None: there is none yet); returns the step it resumes at."""
        self.restored = ckpt.load(self.checkpoint_dir)
        if self.restored is None:
            return None
        tensors, meta = self.restored
        _check_same_config(meta.get("config", {}), self.config, self.checkpoint_dir)
        self.student.load_state_dict(ckpt.unprefixed("student.", tensors), strict=True)
        ckpt.load_optimizer_state(self.opt, tensors, meta["optimizer"])
        self.sched.load_state_dict(meta["scheduler"])
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.pos = _Position(**meta["position"])
        if any(k.startswith("best.") for k in tensors):
            self.best_state = ckpt.unprefixed("best.", tensors)
        ckpt.set_rng_state(tensors, meta["rng"])
        return self.pos.step

    def save(self) -> None:
        if self.checkpoint_dir is None or not self.world.main:
            return
        tensors = ckpt.prefixed("student.", self.student.state_dict())
        opt_tensors, opt_meta = ckpt.optimizer_state(self.opt)
        rng_tensors, rng_meta = ckpt.rng_state()
        tensors.update(opt_tensors)
        tensors.update(rng_tensors)
        if self.best_state is not None:
            tensors.update(ckpt.prefixed("best.", self.best_state))
        meta = {
            "config": self.config.to_dict(),
            "optimizer": opt_meta,
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng_meta,
            "position": dataclasses.asdict(self.pos),
        }
        ckpt.save(self.checkpoint_dir, self.pos.step, tensors, meta)

    def evaluate(self, epoch: int) -> bool:
        """Evaluate (rank 0; the value is shared), keep the best, and say whether to stop early."""
        if self.evaluate_fn is None:
            return False
        pos, world = self.pos, self.world
        self.model.eval()
        value = self.evaluate_fn(self.model) if world.main else None
        self.model.train()
        if world.distributed:  # rank 0's value (NaN: none) on every rank, so all of them decide alike
            mine = (value if value is not None else math.nan) if world.main else 0.0
            value = distributed.all_reduce_sum([mine], self.device.type)[0]
        if value is None or math.isnan(value):
            return False
        pos.evaluations.append({"step": pos.step, "epoch": epoch + 1, "metric": value})
        if pos.best_metric is None or value > pos.best_metric:
            pos.best_metric, pos.best_step, pos.bad_evals = value, pos.step, 0
            if self.config.keep_best:
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            pos.bad_evals += 1
        if self.config.patience and pos.bad_evals >= self.config.patience:
            pos.stopped_early_at = pos.step
            return True
        return False

    def _loss(self, x, y) -> torch.Tensor:
        c = self.config
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            out = primary_output(self.wrapped(x))
            with torch.no_grad():
                t = primary_output(call(self.teacher, x)) if self.teacher is not None else None
            t = t.float() if t is not None and self.kd_logits else None
            loss = kd_loss(out.float(), y, t, c.kd_alpha, c.kd_temperature, self.loss_fn, self.dim)
            if self.features is not None:
                loss = loss + c.kd_feature_weight * self.features.loss(self.student.adapters)
        return loss

    def step(self, it) -> None:
        """One optimizer step over the next `accumulate` batches of `it`."""
        pos, world = self.pos, self.world
        group = min(self.config.accumulate, len(self.batches) - pos.batch)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss_sum, n = 0.0, 0
        for j in range(group):
            x, y = next(it)
            x, y = to_device(x, self.device), to_device(y, self.device)
            n += batch_len(x)
            last = j == group - 1 or not world.distributed
            with nullcontext() if last else self.wrapped.no_sync():  # DDP all-reduces once per step
                loss = self._loss(x, y)
                self.scaler.scale(loss / group).backward()
            loss_sum += float(loss.detach())
        if self.config.clip_grad_norm is not None:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.student.parameters(), self.config.clip_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        pos.batch += group
        pos.step += 1
        pos.samples += n * world.size
        pos.train_s += time.perf_counter() - t0
        pos.loss = loss_sum / group

    def epoch(self, bar, desc: str) -> bool:
        """The rest of the current epoch; True when the run is over (its steps done, or stopped early)."""
        pos, c = self.pos, self.config
        epoch = pos.epoch
        t_epoch = time.perf_counter() - pos.epoch_s
        it = self.batches.epoch(epoch, pos.batch)
        if self.restored is not None and pos.batch:  # mid-epoch: the iterator is where it was; so are the RNGs
            ckpt.set_rng_state(self.restored[0], self.restored[1]["rng"])
        self.restored = None
        while pos.batch < len(self.batches) and pos.step < self.total:
            self.step(it)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{self.n_epochs}", loss=f"{pos.loss:.3f}", refresh=False)
            if c.eval_every and pos.step % c.eval_every == 0 and self.evaluate(epoch):
                return True
            if c.checkpoint_every and pos.step % c.checkpoint_every == 0 and pos.batch < len(self.batches):
                pos.epoch_s = time.perf_counter() - t_epoch
                self.save()
        stop = not c.eval_every and self.evaluate(epoch)
        pos.seconds_per_epoch.append(time.perf_counter() - t_epoch)
        if self.world.main and bar is None:
            _epoch_line(desc, epoch, self.n_epochs, pos, self.total)
        pos.epoch, pos.batch, pos.epoch_s = epoch + 1, 0, 0.0
        self.save()
        return stop or pos.step >= self.total

    def run(self, progress: bool, desc: str) -> None:
        pos = self.pos
        bar = None
        if progress and self.world.main and sys.stderr.isatty():
            bar = tqdm(total=self.total, initial=pos.step, desc=desc, unit="step", leave=False, dynamic_ncols=True)
        self.model.train()
        try:
            stop = pos.stopped_early_at is not None or pos.step >= self.total
            while not stop and pos.epoch < self.n_epochs:
                stop = self.epoch(bar, desc)
        finally:
            if bar is not None:
                bar.close()
            if self.features is not None:
                self.features.remove()
        if self.config.keep_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.to(self.home).eval()
        if self.teacher is not None and self.teacher_home is not None:
            self.teacher.to(self.teacher_home)


def _epoch_line(desc: str, epoch: int, n_epochs: int, pos: _Position, total: int) -> None:
    metric = pos.evaluations[-1]["metric"] if pos.evaluations else None
    rate = pos.samples / pos.train_s if pos.train_s else 0.0
    _log(
        f"{desc}: epoch {epoch + 1}/{n_epochs}, step {pos.step}/{total}, loss {pos.loss:.4f}"
        + (f", metric {metric:.4f}" if metric is not None else "")
        + f", {pos.seconds_per_epoch[-1]:.1f} s, {rate:,.0f} samples/s"
    )


def fit(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    *,
    teacher: nn.Module | None = None,
    loss_fn: Callable | None = None,
    evaluate: Callable[[nn.Module], float | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    desc: str = "fine-tuning",
) -> FitResult:
    """Fine-tune `model` in place on `data` (a built-in Dataset, a DataLoader, batches, ...; see `as_data`).

    Args:
        teacher: the dense model to distil from (logits, and `config.kd_features`); None: labels only.
        loss_fn: loss(outputs, targets) of the label term (default cross-entropy).
        evaluate: evaluate(model) -> metric, higher is better (eval_every, keep_best, patience).
        checkpoint_dir: where checkpoints go (every `checkpoint_every` steps and each epoch's end).
        resume: continue from the newest checkpoint in `checkpoint_dir` (from the start if it has none).
        progress: a bar with ETA on a terminal; otherwise, and when False, one line per epoch on stderr.
    """
    config = config or TrainConfig()
    data = as_data(data)
    if data is None:
        raise HwpruneError("fine-tuning needs data to train on")
    loop = _Loop(model, data, config, teacher, loss_fn, evaluate, checkpoint_dir)
    if loop.total < 1:
        return FitResult(model, 0, 0, loop.world.size, 0.0)
    resumed_at = loop.restore() if resume and checkpoint_dir is not None else None
    if resumed_at is not None and loop.world.main:
        where = f"epoch {loop.pos.epoch + 1}, batch {loop.pos.batch}"
        _log(f"{desc}: resumed from {checkpoint_dir} at step {resumed_at} ({where})")
    loop.run(progress, desc)
    pos = loop.pos
    return FitResult(
        model=model,
        steps=pos.step,
        epochs=pos.epoch,
        processes=loop.world.size,
        samples_per_s=pos.samples / pos.train_s if pos.train_s else 0.0,
        samples=pos.samples,
        seconds_per_epoch=list(pos.seconds_per_epoch),
        evaluations=[Evaluation(**e) for e in pos.evaluations],
        best_step=pos.best_step,
        best_metric=pos.best_metric,
        stopped_early_at=pos.stopped_early_at,
        resumed_at=resumed_at,
        final_loss=pos.loss,
    )
