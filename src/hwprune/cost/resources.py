"""Budgets beyond latency: exact counts of a model's memory, parameters, MACs and (from a target's energy
model) energy, and per-layer curves of the same figures so the allocator can plan against them.

Definitions (what "met exactly as counted" means):

- `params`: the number of parameters.
- `macs`: multiply-accumulates of one forward pass on the example input (Torch-Pruning's counter).
- `memory`: bytes of every parameter and buffer (what the weights file holds) + the *peak activation*:
  the largest sum of input and output bytes of any single leaf module call in one forward pass (the
  working set of a layer-by-layer runtime, as MCUNet's peak-SRAM analysis counts it; tensors held for a
  residual add while a block runs are not counted — a runtime that keeps them needs a margin).
- `energy`: joules per inference from the target's `model_energy` (simulated targets; a measured CPU has
  no energy model and says so).

The allocator sees each figure the way it sees latency: the sum of per-layer curves over the conv/linear
layers (exact for params and MACs, which are bilinear in the two widths) plus a remainder fitted to the
dense model's exact count (BatchNorm entries, activations); the closed loop then counts the real pruned
model exactly and corrects, as it does with measured latency.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import macs_params, run_hooked, size_bytes
from hwprune.cost.curves import Profiler
from hwprune.cost.model import CostModel
from hwprune.groups.analysis import GroupAnalysis
from hwprune.hardware.timing import Timing

COUNTED = ("memory", "energy", "params", "macs")


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(o) for o in obj.values())
    return 0


def peak_activation_bytes(model: nn.Module, inputs) -> int:
    """Largest input + output bytes of any leaf module call in one forward pass on `inputs`."""
    peak = 0

    def hook(mod, args, out):
        nonlocal peak
        peak = max(peak, _tensor_bytes(args) + _tensor_bytes(out))

    out = run_hooked(model, inputs, [m for m in model.modules() if not list(m.children())], hook)
    return max(peak, _tensor_bytes(inputs) + _tensor_bytes(out))


def memory_bytes(model: nn.Module, inputs) -> int:
    """Weights and buffers + peak activation, bytes (see the module docstring)."""
    return size_bytes(model) + peak_activation_bytes(model, inputs)


def _energy_model(target):
    if not hasattr(target, "model_energy") or not hasattr(target, "layer_energy"):
        raise HwpruneError(
            f"target '{getattr(target, 'name', target)}' has no energy model; energy budgets need a simulated "
            "target (see `hwprune targets`, e.g. --target sim:jetson-orin-nano)"
        )
    return target


def count(kind: str, model: nn.Module, inputs, target=None) -> float:
    """The exact figure of `kind` for `model` on `inputs` (energy: on `target`)."""
    if kind == "params":
        return float(sum(p.numel() for p in model.parameters()))
    if kind == "macs":
        return float(macs_params(model, inputs)[0])
    if kind == "memory":
        return float(memory_bytes(model, inputs))
    if kind == "energy":
        return float(_energy_model(target).model_energy(model, inputs))
    raise HwpruneError(f"unknown resource '{kind}'; choose one of: {', '.join(COUNTED)}")


def layer_figure(kind: str, layer: nn.Module, x: torch.Tensor, target=None) -> float:
    """One freshly built conv/linear layer's share of `kind` on input `x`."""
    n_params = sum(p.numel() for p in layer.parameters())
    if kind == "params":
        return float(n_params)
    if kind == "memory":
        return float(sum(p.numel() * p.element_size() for p in layer.parameters()))
    if kind == "macs":
        if isinstance(layer, nn.Linear):
            return float(x.numel() // x.shape[-1] * layer.in_features * layer.out_features)
        with torch.no_grad():
            out = layer(x)
        k = 1
        for s in layer.kernel_size:
            k *= s
        return float(out.numel() * (layer.in_channels // layer.groups) * k)
    if kind == "energy":
        return float(_energy_model(target).layer_energy(layer, x))
    raise HwpruneError(f"unknown resource '{kind}'; choose one of: {', '.join(COUNTED)}")


class _Figures:
    """In-memory stand-in for the latency cache: counted figures are cheap and exact, nothing to keep."""

    def __init__(self):
        self.hits = 0
        self._d: dict[tuple, tuple[float, float]] = {}

    def register_device(self, key: str, fingerprint: dict) -> None:
        pass

    def get(self, device, signature, cin, cout):
        hit = self._d.get((device, signature, cin, cout))
        self.hits += hit is not None
        return hit

    def put(self, device, signature, cin, cout, median, iqr, n) -> None:
        self._d[(device, signature, cin, cout)] = (median, iqr)


class FigureTarget:
    """Presents a counted figure as a 'target' so the Profiler builds its per-layer curves like latency's."""

    def __init__(self, kind: str, target=None):
        self.kind = kind
        self.target = target
        if kind == "energy":
            _energy_model(target)

    def fingerprint(self) -> dict:
        fp = {"figure": self.kind}
        if self.kind == "energy":
            fp["target"] = self.target.fingerprint()
        return fp

    def device_key(self) -> str:
        return hashlib.sha1(repr(sorted(self.fingerprint().items())).encode()).hexdigest()[:16]

    def time_layer(self, layer: nn.Module, x: torch.Tensor) -> Timing:
        v = layer_figure(self.kind, layer, x, self.target)
        return Timing(v, v, v, 1)


def figure_cost_model(kind: str, analysis: GroupAnalysis, dense: nn.Module, inputs, target=None) -> CostModel:
    """Predicted `kind` for any widths: per-layer curves + a remainder fitted to the dense model's count."""
    profiler = Profiler(FigureTarget(kind, target), _Figures(), progress=False)
    cost = CostModel(analysis, profiler.build(analysis))
    cost.add_measurement(cost.dense_widths(), count(kind, dense, inputs, target))
    return cost
