"""What fine-tuning is told (`TrainConfig`, plain data checked on construction) and where it runs.

The pipeline's `FinetuneConfig` mirrors `TrainConfig` field by field (this stage may not import the
pipeline) and names the command-line flag of any field a `TrainConfigError` names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.finetune import distributed
from hwprune.finetune.train import KD_ALPHA, KD_TEMPERATURE

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("one-cycle", "cosine", "step", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
#: SGD's momentum: the value of the ImageNet recipes (He et al. 2016, Goyal et al. 2017).
SGD_MOMENTUM = 0.9
#: The step schedule divides the rate by 10 at 50% and 75% of the steps: He et al. 2016's CIFAR schedule
#: (32k and 48k of 64k iterations).
STEP_MILESTONES, STEP_GAMMA = (0.5, 0.75), 0.1
#: One-cycle's rising share of the steps when no warm-up is given (Smith & Topin 2019; torch's default).
ONE_CYCLE_PCT = 0.3


class TrainConfigError(HwpruneError):
    """A bad TrainConfig value; `field` names it so that the pipeline can name the flag the user typed."""

    def __init__(self, field_name: str, value, why: str):
        super().__init__(f"finetune.{field_name} {value!r}: {why}")
        self.field, self.value, self.why = field_name, value, why


@dataclass
class TrainConfig:
    """How to fine-tune: plain data, checked on construction (a bad value raises TrainConfigError)."""

    epochs: int = 1
    #: Optimizer steps in all; when set it overrides `epochs` (the data is passed over as often as needed).
    steps: int | None = None
    lr: float = 1e-3
    #: Samples per optimizer step over all processes (each of N processes takes batch_size / N).
    batch_size: int = 128
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    lr_schedule: str = "one-cycle"
    warmup_steps: int = 0
    #: Batches whose gradients are summed into one optimizer step.
    accumulate: int = 1
    clip_grad_norm: float | None = None
    #: Evaluate every N steps (0: at each epoch's end) when an `evaluate` callback is given.
    eval_every: int = 0
    #: End with the weights of the best evaluation (the metric: higher is better).
    keep_best: bool = False
    #: Stop after this many evaluations without improvement (0: never).
    patience: int = 0
    kd_temperature: float = KD_TEMPERATURE
    kd_alpha: float = KD_ALPHA
    #: Modules (names in the model) whose outputs are distilled from the teacher's (mean squared error).
    kd_features: tuple[str, ...] = ()
    kd_feature_weight: float = 1.0
    precision: str = "fp32"
    device: str = "auto"
    #: Checkpoint every N steps (0: only at each epoch's end), when fit is given a checkpoint directory.
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self):
        self.kd_features = tuple(self.kd_features or ())
        ints = ("epochs", "warmup_steps", "accumulate", "eval_every", "patience", "checkpoint_every", "batch_size")
        for name in ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise TrainConfigError(name, v, "must be a whole number, 0 or more")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise TrainConfigError("steps", self.steps, "must be at least 1 (or unset: use epochs)")
        if self.batch_size < 1 or self.accumulate < 1:
            name = "batch_size" if self.batch_size < 1 else "accumulate"
            raise TrainConfigError(name, getattr(self, name), "must be at least 1")
        if not self.lr > 0:
            raise TrainConfigError("lr", self.lr, "the learning rate must be positive")
        if self.weight_decay < 0:
            raise TrainConfigError("weight_decay", self.weight_decay, "must be 0 or more")
        for name, choices in (
            ("optimizer", OPTIMIZERS),
            ("lr_schedule", SCHEDULES),
            ("precision", PRECISIONS),
            ("device", DEVICES),
        ):
            if getattr(self, name) not in choices:
                raise TrainConfigError(name, getattr(self, name), f"choose one of: {', '.join(choices)}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise TrainConfigError("clip_grad_norm", self.clip_grad_norm, "must be positive (or unset: no clipping)")
        if not self.kd_temperature > 0:
            raise TrainConfigError("kd_temperature", self.kd_temperature, "must be positive")
        if not 0 <= self.kd_alpha <= 1:
            raise TrainConfigError("kd_alpha", self.kd_alpha, "the weight of the label term must be in [0, 1]")
        if self.kd_feature_weight < 0:
            raise TrainConfigError("kd_feature_weight", self.kd_feature_weight, "must be 0 or more")
        if (self.keep_best or self.patience) and self.eval_every < 0:
            raise TrainConfigError("eval_every", self.eval_every, "must be 0 or more")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "kd_features": list(self.kd_features)}


def resolve_device(config: TrainConfig) -> torch.device:
    """Where training runs: cuda (this process's GPU under torchrun) or cpu; fp16 and a named cuda are
    refused in one line where torch sees no GPU."""
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise TrainConfigError("device", "cuda", "torch sees no CUDA GPU here; use cpu (or auto)")
    use_cuda = config.device == "cuda" or (config.device == "auto" and cuda)
    if config.precision == "fp16" and not use_cuda:
        raise TrainConfigError(
            "precision", "fp16", "fp16 with a GradScaler needs a CUDA GPU; on CPU use bf16 (autocast) or fp32"
        )
    return torch.device("cuda", distributed.world().local_rank) if use_cuda else torch.device("cpu")


def check_features(model: nn.Module, names) -> None:
    """Every --kd-features name is a module of `model` (refused in one line otherwise)."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or not name:
            near = [n for n in modules if n and (name in n or n.endswith(name.rsplit(".", 1)[-1]))][:4]
            hint = f"; similar names: {', '.join(near)}" if near else "; list them with model.named_modules()"
            raise TrainConfigError("kd_features", name, f"no module of the model has this name{hint}")
