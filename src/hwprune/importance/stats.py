"""Statistics that criteria read, gathered in hooked passes over calibration batches.

Gradients (`grad`, `grad_sq`) come from `torch.autograd.grad` on the mean calibration loss, input column
norms (`xnorm`, Wanda's ||X_j||) from forward hooks on Conv/Linear layers, and per-channel output
statistics of a coupled group (`output_stats`, for `activation` and `apoz`) from forward hooks on the
layer whose output stands for the unit's output. Every pass runs in eval mode and leaves no gradient,
hook or mode change on the model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call, eval_mode, logits
from hwprune.groups.analysis import GroupAnalysis
from hwprune.importance.criteria import CRITERIA, Batches, Criterion

#: Norm layers whose output stands for the unit's output when they directly follow the group root.
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter lives (CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(x, device):
    """Inputs moved to `device`: a tensor, or the tensors inside a tuple, list or dict."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def _gradient_stats(
    model: nn.Module, batches: Batches, loss_fn: Callable, want_sq: bool
) -> tuple[dict[nn.Parameter, torch.Tensor], dict[nn.Parameter, torch.Tensor]]:
    """Mean gradient and (if asked) mean squared per-batch gradient of every trainable parameter.

    `torch.autograd.grad` returns the gradients instead of accumulating them in `.grad`, so the model's
    own `.grad` fields are never touched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    g_sum: dict[nn.Parameter, torch.Tensor] = {}
    sq_sum: dict[nn.Parameter, torch.Tensor] = {}
    device = model_device(model)
    with eval_mode(model), torch.enable_grad():
        for x, y in batches:
            loss = loss_fn(logits(model, to_device(x, device)), to_device(y, device))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                if g is None:
                    continue
                g = g.detach().float()
                g_sum[p] = g_sum[p] + g if p in g_sum else g.clone()
                if want_sq:
                    sq_sum[p] = sq_sum[p] + g * g if p in sq_sum else g * g
    n = len(batches)
    return {p: g / n for p, g in g_sum.items()}, {p: g / n for p, g in sq_sum.items()}


def _hooked_passes(model: nn.Module, hooks: list[tuple[nn.Module, Callable]], inputs: list) -> None:
    """No-grad, eval-mode forward passes over `inputs` with each (module, forward hook) attached; the hooks
    are removed and the model's mode restored afterwards."""
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    device = model_device(model)
    try:
        with eval_mode(model), torch.no_grad():
            for x in inputs:
                call(model, to_device(x, device))
    finally:
        for h in handles:
            h.remove()


def _conv_column_sq(module: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    """Sum of squares of each im2col input column of a conv: shape (in_channels, *kernel_size).

    Column (c, k) holds input channel c at kernel offset k for every output position and sample (the
    unfolded matrix a conv multiplies its weights with); padding entries count as the padding mode makes them.
    """
    nd = len(module.kernel_size)
    if x.dim() == nd + 1:  # unbatched input
        x = x.unsqueeze(0)
    x = x.detach().float()
    pad = module._reversed_padding_repeated_twice
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    x2 = x * x
    spatial = x2.shape[2:]
    k, s, d = module.kernel_size, module.stride, module.dilation
    out_len = [(spatial[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(nd)]
    col = torch.zeros((x2.shape[1], *k), device=x2.device)
    for off in itertools.product(*(range(ki) for ki in k)):
        window = tuple(slice(off[i] * d[i], off[i] * d[i] + (out_len[i] - 1) * s[i] + 1, s[i]) for i in range(nd))
        col[(slice(None), *off)] = x2[(slice(None), slice(None), *window)].sum(dim=[0, *range(2, 2 + nd)])
    return col


def _input_norms(model: nn.Module, batches: Batches, modules: dict[str, nn.Module]) -> dict[nn.Module, torch.Tensor]:
    """For each Conv/Linear that runs: ||X_j||_2 of the input column each weight entry multiplies,
    over all calibration samples (and positions/tokens), in the shape of the module's weight."""
    sq: dict[nn.Module, torch.Tensor] = {}

    def hook(mod, args, out):
        x = args[0]
        if isinstance(mod, nn.Linear):
            v = x.detach().float().reshape(-1, mod.in_features).pow(2).sum(0)
        else:
            v = _conv_column_sq(mod, x)
        sq[mod] = sq[mod] + v if mod in sq else v

    _hooked_passes(model, [(m, hook) for m in modules.values()], [x for x, _y in batches])
    out: dict[nn.Module, torch.Tensor] = {}
    for m, v in sq.items():
        norm = v.sqrt()
        if isinstance(m, nn.Linear):
            out[m] = norm.expand(m.out_features, m.in_features)
        else:
            # Weight [o, c'] multiplies input channel (o // out-per-group) * in-per-group + c'.
            cpg, opg = m.in_channels // m.groups, m.out_channels // m.groups
            o = torch.arange(m.out_channels, device=norm.device)
            idx = (o // opg).unsqueeze(1) * cpg + torch.arange(cpg, device=norm.device)
            out[m] = norm[idx]
    return out


@dataclass
class CollectedStats:
    """What `collect_stats` gathered: parameter -> mean gradient (`grad`) and mean squared per-batch gradient
    (`grad_sq`), Conv/Linear module -> input column norms shaped like its weight (`xnorm`). Empty when
    the criterion does not read that statistic."""

    grad: dict = field(default_factory=dict)
    grad_sq: dict = field(default_factory=dict)
    xnorm: dict = field(default_factory=dict)


def collect_stats(
    crit: Criterion, model: nn.Module, batches: Batches | None, loss_fn: Callable, modules: dict[str, nn.Module]
) -> CollectedStats:
    """The statistics `crit` reads (its `needs`), on calibration `batches`: gradients of `loss_fn` for every
    trainable parameter, input norms for the Conv/Linear `modules`. A criterion that needs data and gets no
    batches is a HwpruneError naming the criteria that need none."""
    if crit.needs_data and not batches:
        raise HwpruneError(
            f"criterion '{crit.name}' needs calibration data: pass data=... (--data on the command line) "
            "or choose one of: " + ", ".join(sorted(c.name for c in CRITERIA.values() if not c.needs_data))
        )
    got = CollectedStats()
    if crit.needs_grad:
        got.grad, got.grad_sq = _gradient_stats(model, batches, loss_fn, "grad_sq" in crit.needs)
    if "xnorm" in crit.needs:
        got.xnorm = _input_norms(model, batches, modules)
    return got


# --- statistics of a group's output ------------------------------------------------------------------


def dep_root_idxs(dep, idxs, group) -> list[int]:
    """Indices of the root channels that `idxs` of this dependency map back to (concat/split aware)."""
    for item in group.items:
        if item.dep is dep:
            return list(item.root_idxs)
    return list(idxs)


def channel_dim(module: nn.Module) -> int:
    """Where the channels are in the module's output: last for Linear/LayerNorm (features), else dim 1."""
    return -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1


def out_members(analysis: GroupAnalysis, gid: str) -> list[tuple[nn.Module, list[int], list[int]]]:
    """(module, its channel indices, the root channels they map to) for every out-side member of a group."""
    group = analysis.tp_groups[gid]
    seen, out = set(), []
    for dep, idxs in group:
        mod = dep.target.module
        if not isinstance(mod, nn.Module) or mod in seen or not analysis.graph.is_out_channel_pruning_fn(dep.handler):
            continue
        seen.add(mod)
        out.append((mod, list(idxs), dep_root_idxs(dep, idxs, group)))
    return out


def _measure_points(model: nn.Module, analysis: GroupAnalysis, x) -> dict[str, nn.Module]:
    """Group id -> the module whose output is the unit's output: the root, or a norm layer of the group
    that is called directly on the root's output (a conv's BatchNorm). One probe forward pass decides."""
    roots = {analysis.tp_groups[g.id][0].dep.target.module: g.id for g in analysis.groups}
    norms = {m: g.id for g in analysis.groups for m, _, _ in out_members(analysis, g.id) if isinstance(m, NORM_TYPES)}
    root_out: dict[str, torch.Tensor] = {}
    point = {gid: root for root, gid in roots.items()}

    def on_root(mod, args, out):
        root_out.setdefault(roots[mod], out)

    def on_norm(mod, args, out):
        gid = norms[mod]
        if args and gid in root_out and args[0] is root_out[gid] and point[gid] in roots:
            point[gid] = mod

    _hooked_passes(model, [(m, on_root) for m in roots] + [(m, on_norm) for m in norms], [x])
    return point


def output_stats(
    model: nn.Module, analysis: GroupAnalysis, batches: Batches, reduce: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, np.ndarray]:
    """Group id -> mean over calibration entries of reduce(unit output), per channel."""
    point = _measure_points(model, analysis, batches[0][0])
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def make_hook(gid: str):
        def hook(mod, args, out):
            a = out.detach().float().movedim(channel_dim(mod), 0)
            a = a.reshape(a.shape[0], -1)
            v = reduce(a).sum(1).double().cpu()
            sums[gid] = sums[gid] + v if gid in sums else v
            counts[gid] = counts.get(gid, 0) + a.shape[1]

        return hook

    _hooked_passes(model, [(m, make_hook(gid)) for gid, m in point.items()], [x for x, _y in batches])
    silent = [g.id for g in analysis.groups if g.id not in sums]
    if silent:
        raise HwpruneError(
            f"the output of group '{silent[0]}' could not be observed (its root never ran as a module); "
            "choose a weight-based criterion such as l1 or taylor"
        )
    return {g.id: (sums[g.id] / counts[g.id]).numpy() for g in analysis.groups}
