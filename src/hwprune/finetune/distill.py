"""Feature distillation (FitNets, Romero et al. 2015): forward hooks on named modules of the student and the
teacher, mean squared error between their outputs, a learned linear adapter where pruning narrowed one."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwprune.core.modules import call, primary_output
from hwprune.finetune.config import TrainConfigError


class Student(nn.Module):
    """The model and the feature adapters trained with it (one module: one optimizer, one DDP wrapper)."""

    def __init__(self, model: nn.Module, adapters: nn.ModuleDict):
        super().__init__()
        self.model, self.adapters = model, adapters

    def forward(self, inputs):
        return call(self.model, inputs)


def _feature_dim(name: str, s: torch.Size, t: torch.Size) -> int | None:
    if len(s) != len(t):
        raise TrainConfigError("kd_features", name, f"pruned output {tuple(s)} and dense {tuple(t)} differ in rank")
    differ = [i for i, (a, b) in enumerate(zip(s, t, strict=True)) if a != b]
    if len(differ) > 1:
        raise TrainConfigError(
            "kd_features", name, f"pruned output {tuple(s)} and dense {tuple(t)} differ in more than one dimension"
        )
    return differ[0] if differ else None


class FeatureDistiller:
    """Forward hooks on the named modules of student and teacher, and the FitNets loss between them."""

    def __init__(self, student: nn.Module, teacher: nn.Module, names: tuple[str, ...], sample, device):
        self.names = names
        self.s_out: dict[str, torch.Tensor] = {}
        self.t_out: dict[str, torch.Tensor] = {}
        self.hooks = []
        for name in names:
            self.hooks.append(student.get_submodule(name).register_forward_hook(self._keep(self.s_out, name)))
            self.hooks.append(teacher.get_submodule(name).register_forward_hook(self._keep(self.t_out, name)))
        was = student.training
        student.eval()
        with torch.no_grad():  # one eval-mode pass for the shapes: no BatchNorm statistic moves
            call(student, sample)
            call(teacher, sample)
        student.train(was)
        self.dims: dict[str, int | None] = {}
        adapters = {}
        for name in names:
            s, t = self.s_out[name], self.t_out[name]
            d = _feature_dim(name, s.shape, t.shape)
            self.dims[name] = d
            if d is not None:
                adapters[name.replace(".", "__")] = nn.Linear(s.shape[d], t.shape[d], bias=False)
        self.adapters = nn.ModuleDict(adapters).to(device)
        self.s_out.clear()
        self.t_out.clear()

    @staticmethod
    def _keep(store: dict, name: str):
        def hook(module, args, out):
            store[name] = primary_output(out)

        return hook

    def loss(self, adapters: nn.ModuleDict) -> torch.Tensor:
        total = 0.0
        for name in self.names:
            s, t = self.s_out.pop(name).float(), self.t_out.pop(name).float()
            d = self.dims[name]
            if d is not None:
                s = adapters[name.replace(".", "__")](s.movedim(d, -1)).movedim(-1, d)
            total = total + F.mse_loss(s, t)
        return total / len(self.names)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
