"""`fluctuation`: FLAP's channel importance, measured on the inputs of the layers that consume a group.

FLAP (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language Models", eq. 5)
scores input channel j of a layer by how much its input fluctuates around its mean, weighted by how much the
layer reads it: S_j = Var_n(X[n, j]) x ||W[:, j]||_2^2, the sample variance over the calibration tokens. A
channel whose input is nearly constant can be removed and its mean folded into the bias (the paper's bias
compensation; not done here, where a channel's removal takes its mean contribution with it). For a Llama FFN
neuron the consumer is `down_proj`, for an attention head `o_proj` (a head's score is the sum over its
channels, as every group-level score here).

It is measured where the unit is read, not where it is written: only the in-channel members of a group (the
Linear/Conv layers whose inputs the group's channels are) count; the producers' rows (`gate_proj`, `up_proj`,
`q_proj`) do not. Padding tokens of a text batch are counted like any other (the hook sees no attention mask).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from hwprune.core.modules import run_hooked
from hwprune.importance.criteria import CHANNEL, register_criterion
from hwprune.importance.stats import dep_root_idxs, model_device, to_device

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


class _Moments:
    """Per input channel of one layer: the count, sum and sum of squares of its entries (float64)."""

    def __init__(self):
        self.n, self.s, self.sq = 0, None, None

    def __call__(self, mod, args, out):
        x = args[0].detach().double()
        x = x.reshape(-1, x.shape[-1]) if isinstance(mod, nn.Linear) else x.transpose(0, 1).reshape(x.shape[1], -1).T
        s, sq = x.sum(0).cpu(), (x * x).sum(0).cpu()
        self.s, self.sq = (s, sq) if self.s is None else (self.s + s, self.sq + sq)
        self.n += x.shape[0]

    def variance(self) -> torch.Tensor:
        """Sample variance (n - 1 in the denominator, FLAP's) of each input channel."""
        return ((self.sq - self.s * self.s / self.n) / max(self.n - 1, 1)).clamp_min(0)


def column_norms_sq(module: nn.Module) -> torch.Tensor:
    """||W[:, j]||^2 per input channel j: a Linear's input column; a conv's input channel over every filter that
    reads it and its kernel (grouped convs: the filters of its group)."""
    w = module.weight.detach().double().cpu()
    if isinstance(module, nn.Linear):
        return w.pow(2).sum(0)
    per = w.pow(2).reshape(w.shape[0], w.shape[1], -1).sum(-1)  # (out, in / groups)
    groups = module.groups
    return per.reshape(groups, w.shape[0] // groups, w.shape[1]).sum(1).reshape(-1)


@register_criterion(
    "fluctuation",
    description="FLAP: sample variance of the channel's input to the layer that reads it x that layer's "
    "||W[:, j]||^2 (An et al. 2024)",
    comparable=False,  # a variance times a squared weight norm: units differ from layer to layer
    needs={"data"},
    granularities=(CHANNEL,),
    unit=True,
)
def _fluctuation(model, analysis, batches, loss_fn, p):
    """Measured on the group's consumers: for every Linear/Conv whose input channels the group's channels are
    (down_proj for FFN neurons, o_proj for heads, the next conv), the sample variance of that input channel
    over the calibration tokens (positions and samples) times the squared norm of the weights reading it,
    summed over consumers. The producers' own weights do not count."""
    uses: dict[nn.Module, list[tuple[str, list[int], list[int]]]] = {}
    for g in analysis.groups:
        group = analysis.tp_groups[g.id]
        for dep, idxs in group:
            mod = dep.target.module
            if isinstance(mod, _LAYERS) and not analysis.graph.is_out_channel_pruning_fn(dep.handler):
                uses.setdefault(mod, []).append((g.id, list(idxs), list(dep_root_idxs(dep, idxs, group))))
    moments = {m: _Moments() for m in uses}
    device = model_device(model)
    for x, _y in batches:
        run_hooked(model, to_device(x, device), list(moments), lambda mod, a, o: moments[mod](mod, a, o))
    scores = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in analysis.groups}
    for mod, members in uses.items():
        if not moments[mod].n:
            continue  # never ran on the calibration data: its channels score nothing here
        s = moments[mod].variance() * column_norms_sq(mod)
        for gid, local, root in members:
            scores[gid].index_add_(0, torch.as_tensor(root), s[torch.as_tensor(local)])
    return {gid: v.numpy().astype(np.float64) for gid, v in scores.items()}
