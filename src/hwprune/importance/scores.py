"""Scores from a criterion: per channel of every coupled group, or per weight of every Conv/Linear.

- *Channel level* (`compute_scores`): a score per channel of each coupled group. Element criteria score
  every parameter entry a channel owns in its group (the root's filters, the BN entries, the consumers'
  input columns) and *sum* those slices (Torch-Pruning's default group reduction; Molchanov et al. 2019
  sum Taylor terms the same way). Unit criteria (activation, APoZ, loss change) are measured on the
  group's output instead; each criterion's `aggregation` says which.
- *Weight level* (`weight_scores`): a score per entry of every Conv/Linear `.weight`, for unstructured
  and N:M masks. Unit criteria have no per-weight form and say so.

Higher scores are always more important. Data-driven criteria use cross-entropy on (x, y) calibration
batches with the model in eval mode; no gradient, hook or mode change is left on the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwprune.core.errors import HwpruneError
from hwprune.groups.analysis import PRUNABLE_TYPES, GroupAnalysis
from hwprune.importance.criteria import CHANNEL, CRITERIA, WEIGHT, Stats, get_criterion, resolve_params
from hwprune.importance.stats import collect_stats, dep_root_idxs


def weight_scores(
    model: nn.Module,
    criterion: str,
    batches: list[tuple[torch.Tensor, torch.Tensor]] | None,
    params: dict | None = None,
    layers: list[str] | None = None,
    *,
    seed: int = 0,
    loss_fn: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """Per-weight scores of every Conv/Linear (or of `layers`): module name -> tensor of its weight's shape.

    Higher is more important; float32 on the weight's device. The caller decides which layers to mask.
    Unit-level criteria (no per-weight form) raise HwpruneError.
    """
    crit = get_criterion(criterion)
    if WEIGHT not in crit.granularities:
        weight_level = sorted(c.name for c in CRITERIA.values() if WEIGHT in c.granularities)
        raise HwpruneError(
            f"criterion '{criterion}' scores whole units ({', '.join(crit.granularities)}), not single weights; "
            f"for weight-level sparsity choose one of: {', '.join(weight_level)}"
        )
    p = resolve_params(crit, params)
    named = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if layers is not None:
        missing = [n for n in layers if n not in named]
        if missing:
            raise HwpruneError(f"layer '{missing[0]}' is not a Conv/Linear module of the model")
        named = {n: named[n] for n in layers}
    got = collect_stats(crit, model, batches, loss_fn or F.cross_entropy, named)
    gen = torch.Generator().manual_seed(seed)
    scores: dict[str, torch.Tensor] = {}
    missing_stats = []
    with torch.no_grad():
        for name, m in named.items():
            w = m.weight.detach()
            st = Stats(got.grad.get(m.weight), got.grad_sq.get(m.weight), got.xnorm.get(m), gen)
            if ("xnorm" in crit.needs and st.xnorm is None) or (crit.needs_grad and st.grad is None):
                missing_stats.append(name)
                continue
            scores[name] = crit.element(w.float(), st, p).float().to(w.device)
    if missing_stats:
        what = "inputs (it never ran as a module)" if "xnorm" in crit.needs else "gradient (frozen or unused)"
        raise HwpruneError(
            f"criterion '{criterion}' could not see the {what} of layer(s) {', '.join(missing_stats[:5])}; "
            "leave them out with layers=[...] or choose a magnitude criterion (l1, l2)"
        )
    return scores


# --- channel level ----------------------------------------------------------------------------------------


def _channel_slices(module: nn.Module, side: str) -> Iterable[tuple[torch.Tensor, int]]:
    """(parameter, channel dim) pairs that a channel owns in `module` on the given side."""
    for pname in ("weight", "bias"):
        p = getattr(module, pname, None)
        if not isinstance(p, nn.Parameter):
            continue
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            if side == "out" or depthwise:
                yield p, 0
            elif pname == "weight":
                yield p, 1
        elif side == "out" and p.dim() >= 1:  # norms, PReLU: one entry per channel
            yield p, 0


def compute_scores(
    model: nn.Module,
    analysis: GroupAnalysis,
    criterion: str,
    calibration: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
    params: dict | None = None,
) -> dict[str, np.ndarray]:
    """Score every channel of every group; returns group id -> scores (float64, one per channel)."""
    crit = get_criterion(criterion)
    if CHANNEL not in crit.granularities:
        raise HwpruneError(f"criterion '{criterion}' does not score channels (it scores: {crit.granularities})")
    p = resolve_params(crit, params)
    loss_fn = loss_fn or F.cross_entropy
    if crit.unit is not None:
        if crit.needs_data and not calibration:
            collect_stats(crit, model, calibration, loss_fn, {})  # raises the no-data error
        return crit.unit(model, analysis, calibration, loss_fn, p)
    modules = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    got = collect_stats(crit, model, calibration, loss_fn, modules)
    gen = torch.Generator().manual_seed(seed)

    scores: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for g in analysis.groups:
            total = torch.zeros(g.size, dtype=torch.float64)
            for dep, idxs in analysis.tp_groups[g.id]:
                module = dep.target.module
                if not isinstance(module, nn.Module):
                    continue
                side = "out" if analysis.graph.is_out_channel_pruning_fn(dep.handler) else "in"
                root_idxs = torch.as_tensor(dep_root_idxs(dep, idxs, analysis.tp_groups[g.id]))
                local = torch.as_tensor(list(idxs))
                for prm, dim in _channel_slices(module, side):
                    if prm.shape[dim] <= int(local.max()):
                        continue
                    xnorm = got.xnorm.get(module) if prm is getattr(module, "weight", None) else None
                    st = Stats(got.grad.get(prm), got.grad_sq.get(prm), xnorm, gen)
                    if crit.needs_grad and st.grad is None and st.grad_sq is None:
                        continue
                    w = prm.detach().index_select(dim, local.to(prm.device)).double()
                    per = crit.element(w, st.select(dim, local), p)
                    per = per.transpose(0, dim).reshape(len(local), -1).sum(1).cpu()
                    total.index_add_(0, root_idxs, per)
            if crit.finish is not None:
                total = crit.finish(total, p)
            scores[g.id] = total.numpy()
    return scores


def normalized(scores: dict[str, np.ndarray], criterion: str) -> dict[str, np.ndarray]:
    """Scores made comparable across groups (see `Criterion.comparable`)."""
    if get_criterion(criterion).comparable:
        return scores
    return {k: v / max(float(v.mean()), 1e-12) for k, v in scores.items()}
