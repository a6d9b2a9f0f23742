"""Unit criteria: rules with no per-weight form, measured on the output of a whole coupled group.

`activation` (mean |a|) and `apoz` (1 - the average percentage of zeros, Hu et al. 2016) read each
channel's output on calibration data; `loss-change` zeroes each channel in the outputs of every
out-side member of its group and measures the rise of the calibration loss. All three score channels;
`loss-change` also names blocks, where `hwprune.apply.blocks` measures the block replaced by identity.
None scores attention heads: heads are scored by element criteria (`hwprune.apply.heads`).
"""

from __future__ import annotations

import numpy as np
import torch

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import eval_mode
from hwprune.core.modules import logits as logits_of
from hwprune.importance.criteria import BLOCK, CHANNEL, register_criterion
from hwprune.importance.stats import channel_dim, model_device, out_members, output_stats, to_device


@register_criterion(
    "activation",
    description="mean |activation| of the unit's output on calibration data",
    comparable=False,
    needs={"data"},
    granularities=(CHANNEL,),
    unit=True,
)
def _activation(model, analysis, batches, loss_fn, p):
    """Measured on the unit's output: mean |a| of the group root's output channel over every calibration
    entry, taken after the norm layer that is called directly on the root's output when there is one
    (a conv's BatchNorm). Other out-side members of the group (residual branches) are not measured."""
    return output_stats(model, analysis, batches, torch.abs)


@register_criterion(
    "apoz",
    description="1 - APoZ, the share of outputs a ReLU keeps non-zero (Hu et al. 2016: lower APoZ = more important)",
    comparable=True,  # a fraction in [0, 1] in every group
    needs={"data"},
    granularities=(CHANNEL,),
    unit=True,
)
def _apoz(model, analysis, batches, loss_fn, p):
    """Measured on the unit's output (the same point as `activation`): 1 - the share of entries <= 0,
    i.e. of entries a following ReLU would zero."""
    return output_stats(model, analysis, batches, lambda a: (a > 0).double())


def _repeat(x, k: int):
    if isinstance(x, torch.Tensor):
        return torch.cat([x] * k) if k > 1 else x
    if isinstance(x, (tuple, list)):
        return type(x)(_repeat(v, k) for v in x)
    if isinstance(x, dict):
        return {n: _repeat(v, k) for n, v in x.items()}
    return x


def _batch_size(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    vals = list(x.values()) if isinstance(x, dict) else list(x) if isinstance(x, (tuple, list)) else []
    return next((v.shape[0] for v in vals if isinstance(v, torch.Tensor)), 1)


@register_criterion(
    "loss-change",
    description="measured rise of the calibration loss when the unit is removed (its outputs zeroed)",
    comparable=True,  # a loss change in every group
    needs={"data"},
    granularities=(CHANNEL, BLOCK),  # blocks: hwprune.apply.blocks measures the block replaced by identity
    # Cost: one forward of every sample per channel of every group. `batches` caps the calibration
    # batches used; `max_batch` packs several channels' zeroings into one forward (the batch repeated
    # once per channel, each copy with another channel zeroed), so the number of forward calls is
    # about sum over groups of size * batch / max_batch.
    params={"batches": 2, "max_batch": 256},
    unit=True,
)
def _loss_change(model, analysis, batches, loss_fn, p):
    """Measured on the whole unit: mean over the first `batches` calibration batches of L(unit removed) -
    L(dense), the unit removed by zeroing its channel in the output of every out-side member of the
    group (roots, their norms, residual branches that add into it); a removal that lowers the loss scores 0."""
    batches = list(batches)[: int(p["batches"])]
    device = model_device(model)
    state: dict = {"chunk": None}
    scores: dict[str, np.ndarray] = {}

    def make_hook(local: list[int], root: list[int]):
        def hook(mod, args, out):
            chunk = state["chunk"]
            if chunk is None or not isinstance(out, torch.Tensor):
                return None
            k = len(chunk)
            cd = channel_dim(mod) % out.dim()
            if out.shape[0] % k:
                raise HwpruneError(
                    f"loss-change: an output of '{type(mod).__name__}' is not batch-first; "
                    "pass params={'max_batch': <calibration batch size>} to zero one channel per forward"
                )
            mask = torch.ones(k, out.shape[cd], dtype=out.dtype, device=out.device)
            for i, c in enumerate(chunk):
                mask[i, [lo for lo, r in zip(local, root, strict=True) if r == c]] = 0
            shape = [k] + [out.shape[d] if d == cd else 1 for d in range(out.dim())]
            o = out.reshape(k, out.shape[0] // k, *out.shape[1:])
            return (o * mask.view(shape)).reshape(out.shape)

        return hook

    with eval_mode(model), torch.no_grad():
        dev_batches = [(to_device(x, device), to_device(y, device)) for x, y in batches]
        base = [float(loss_fn(logits_of(model, x), y)) for x, y in dev_batches]
        for g in analysis.groups:
            rise = np.zeros(g.size)
            handles = [m.register_forward_hook(make_hook(lo, ro)) for m, lo, ro in out_members(analysis, g.id)]
            try:
                for (x, y), b in zip(dev_batches, base, strict=True):
                    n = _batch_size(x)
                    per = max(1, int(p["max_batch"]) // n)
                    for start in range(0, g.size, per):
                        chunk = list(range(start, min(g.size, start + per)))
                        state["chunk"] = chunk
                        logits = logits_of(model, _repeat(x, len(chunk)))
                        state["chunk"] = None
                        logits = logits.reshape(len(chunk), -1, *logits.shape[1:])
                        for i, c in enumerate(chunk):
                            rise[c] += float(loss_fn(logits[i], y)) - b
            finally:
                state["chunk"] = None
                for h in handles:
                    h.remove()
            scores[g.id] = np.maximum(rise / len(dev_batches), 0.0)
    return scores
