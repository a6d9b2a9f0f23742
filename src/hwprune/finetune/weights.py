"""Weight-level pruning while fine-tuning: masks on a schedule, with training between maskings.

Schedules (`prune_weights`): one-shot (mask, then fine-tune), iterative (prune a growing fraction and
fine-tune, repeated; Han et al. 2015, Frankle & Carbin 2019) and gradual (re-mask every few steps along
the cubic ramp of Zhu & Gupta 2017). The masks themselves (patterns, scores to masks, the hooks that
keep pruned weights at zero) are `hwprune.apply.masks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn

from hwprune.apply.channels import recalibrate_bn
from hwprune.apply.masks import (
    SCOPES,
    apply_masks,
    compute_masks,
    get_masks,
    masked_modules,
    parse_pattern,
    prunable_layers,
    reapply_masks,
    resolve_sparsity,
    weight_matrix,
)
from hwprune.core.errors import HwpruneError
from hwprune.finetune.train import train_steps
from hwprune.importance import weight_scores

SCHEDULES = ("one-shot", "iterative", "gradual")
Scorer = Callable[[nn.Module, list[str]], dict[str, torch.Tensor]]


def gradual_sparsity(
    step: int, start_step: int, end_step: int, final: float, initial: float = 0.0, power: int = 3
) -> float:
    """Zhu & Gupta 2017: s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0))^power on [t_0, t_end].

    0 before `start_step` (training dense), `final` from `end_step` on. The cubic prunes fast while many
    redundant weights remain and slowly near the end, when each removal costs more.
    """
    if end_step <= start_step:
        raise HwpruneError(f"gradual sparsity needs end_step > start_step (got {start_step}..{end_step})")
    if not 0 <= initial <= final < 1:
        raise HwpruneError(f"gradual sparsity needs 0 <= initial <= final < 1 (got {initial}, {final})")
    if step < start_step:
        return 0.0
    if step >= end_step:
        return final
    frac = (step - start_step) / (end_step - start_step)
    return final + (initial - final) * (1 - frac) ** power


def iterative_targets(final: float, rounds: int) -> list[float]:
    """Round r of R removes the same fraction of the weights still there: s_r = 1 - (1 - s)^(r/R).

    Iterative magnitude pruning removes a fixed share of the remaining weights each round (Han et al.
    2015; 20% per round in Frankle & Carbin 2019), so late rounds, at high sparsity, remove fewer.
    """
    return [1 - (1 - final) ** (r / rounds) for r in range(1, rounds + 1)]


@dataclass
class WeightPruneConfig:
    """How `prune_weights` prunes and fine-tunes; plain data, so it goes into reports as JSON."""

    pattern: str = "unstructured"
    sparsity: float | None = None  # fraction of weights removed; None for N:M (implied)
    schedule: str = "one-shot"
    scope: str = "layer"
    criterion: str = "l1"
    epochs: int = 2  # fine-tuning epochs in total, the same for every schedule so they compare fairly
    rounds: int = 3  # iterative: prune/fine-tune rounds
    every: int = 10  # gradual: re-mask every this many optimiser steps
    ramp: float = 0.75  # gradual: share of the fine-tuning steps over which sparsity ramps to its final value
    lr: float = 1e-3
    batch_size: int = 128
    calib_batches: int = 4  # batches for gradient-based criteria
    bn_batches: int = 20  # batches to re-estimate BatchNorm statistics after each masking (0: don't)
    seed: int = 0
    layers: list[str] | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self):
        pat = parse_pattern(self.pattern)
        self.sparsity = resolve_sparsity(pat, self.sparsity)
        if self.schedule not in SCHEDULES:
            raise HwpruneError(f"schedule '{self.schedule}' must be one of: {', '.join(SCHEDULES)}")
        if pat.kind == "nm" and self.schedule != "one-shot":
            raise HwpruneError(f"{pat.text} has a fixed sparsity; use schedule one-shot with N:M")
        if self.scope not in SCOPES:
            raise HwpruneError(f"scope '{self.scope}' must be one of: {', '.join(SCOPES)}")
        if self.epochs < 0 or self.rounds < 1 or self.every < 1 or not 0 < self.ramp <= 1 or self.bn_batches < 0:
            raise HwpruneError("need epochs >= 0, rounds >= 1, every >= 1, 0 < ramp <= 1 and bn_batches >= 0")


@dataclass
class WeightPruneResult:
    """The masked, fine-tuned model, the config it was pruned with and its masking history."""

    model: nn.Module
    config: WeightPruneConfig
    history: list[dict]  # one entry per (re-)masking: step, target and actual sparsity of the masked layers


def _clear_pruned_moments(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """After a re-mask, zero the optimiser moments of the newly pruned weights, so Adam does not keep moving
    them on stale momentum."""
    for m in masked_modules(model).values():
        for v in opt.state.get(m.weight, {}).values():
            if isinstance(v, torch.Tensor) and v.shape == m.weight.shape:
                v.masked_fill_(~m.hwprune_mask, 0)


class _Masking:
    """Masks `layers` of `model` to a target sparsity on demand, nested on its earlier masks, and records each
    masking in `history`."""

    def __init__(self, model: nn.Module, data, cfg: WeightPruneConfig, layers: list[str], scorer: Scorer, loss_fn=None):
        self.model, self.data, self.cfg, self.layers, self.scorer = model, data, cfg, layers, scorer
        self.loss_fn = loss_fn  # the label term of fine-tuning (None: cross-entropy)
        self.pattern = parse_pattern(cfg.pattern)
        self.history: list[dict] = []

    def mask_to(self, target: float, step: int) -> None:
        pat, model = self.pattern, self.model
        scores = self.scorer(model, self.layers)
        current = get_masks(model)
        # Nested masks: a weight pruned earlier scores -inf and stays pruned.
        scores = {
            n: s.masked_fill(~current[n].to(s.device), -math.inf) if n in current else s for n, s in scores.items()
        }
        masks = compute_masks(model, scores, pat, None if pat.kind == "nm" else target, self.cfg.scope, self.layers)
        apply_masks(model, masks, pat)
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        self.history.append({"step": step, "target": target, "actual": 1 - kept / max(total, 1)})

    def recalibrate(self) -> None:
        # Zeroing weights shifts every later BatchNorm's input statistics; on the MNIST-1D example, 75%
        # unstructured masks alone measure 15% accuracy with the stale statistics and 84% re-estimated.
        cfg = self.cfg
        if self.data is not None:  # data-free runs (magnitude criteria) keep the dense statistics
            recalibrate_bn(self.model, self.data.calibration(cfg.bn_batches, cfg.seed + 1, cfg.batch_size))


def _merged_config(config: WeightPruneConfig | None, overrides: dict) -> WeightPruneConfig:
    if config is None:
        return WeightPruneConfig(**overrides)
    if overrides:
        known = {f.name for f in fields(WeightPruneConfig)}
        return WeightPruneConfig(**{**{k: getattr(config, k) for k in known}, **overrides})
    return config


def _layers_to_mask(model: nn.Module, cfg: WeightPruneConfig, example) -> list[str]:
    """`cfg.layers`, or every prunable layer (less `cfg.exclude`); for N:M, only those whose rows split
    into whole groups of M."""
    pat = parse_pattern(cfg.pattern)
    layers = cfg.layers if cfg.layers is not None else prunable_layers(model, example, cfg.exclude)
    if pat.kind == "nm" and cfg.layers is None:
        modules = dict(model.named_modules())
        layers = [n for n in layers if weight_matrix(modules[n].weight).shape[1] % pat.m == 0]
    return layers


def _default_scorer(data, cfg: WeightPruneConfig, loss_fn=None) -> Scorer:
    """`importance.weight_scores` with the config's criterion on `calib_batches` training batches."""
    calib = data.calibration(cfg.calib_batches, cfg.seed) if data is not None else []

    def scorer(m, names):
        return weight_scores(m, cfg.criterion, calib, layers=names, loss_fn=loss_fn)

    return scorer


def _iterative(masking: _Masking, batches: list, teacher, progress: bool) -> None:
    cfg, model = masking.cfg, masking.model
    per = math.ceil(len(batches) / cfg.rounds) if batches else 0
    for r, target in enumerate(iterative_targets(cfg.sparsity, cfg.rounds)):
        masking.mask_to(target, r * per)
        masking.recalibrate()
        chunk = batches[r * per : (r + 1) * per]
        desc = f"round {r + 1}/{cfg.rounds}"
        train_steps(model, chunk, cfg.lr, teacher, desc=desc, progress=progress, loss_fn=masking.loss_fn)


def _gradual(masking: _Masking, batches: list, teacher, progress: bool) -> None:
    cfg, model, history = masking.cfg, masking.model, masking.history
    end = max(1, int(cfg.ramp * len(batches)))

    def callback(step: int) -> bool:
        if step > end or (step % cfg.every and step != end):
            return False
        target = gradual_sparsity(step, 0, end, cfg.sparsity)
        if target <= 0:
            return False
        masking.mask_to(target, step)
        return True

    def before_step(step: int, opt) -> None:
        if callback(step):
            _clear_pruned_moments(model, opt)

    train_steps(
        model,
        batches,
        cfg.lr,
        teacher,
        desc="gradual pruning",
        progress=progress,
        before_step=before_step,
        loss_fn=masking.loss_fn,
    )
    if not history or history[-1]["target"] < cfg.sparsity:
        masking.mask_to(cfg.sparsity, len(batches))  # the ramp ended with training (ramp = 1 or few steps)
        masking.recalibrate()


def prune_weights(
    model: nn.Module,
    data,
    config: WeightPruneConfig | None = None,
    teacher: nn.Module | None = None,
    scorer: Scorer | None = None,
    progress: bool = False,
    example=None,
    loss_fn: Callable | None = None,
    **overrides,
) -> WeightPruneResult:
    """Mask `model`'s weights to a pattern and sparsity on a schedule, fine-tuning on `data` (in place).

    Call as `prune_weights(model, data, WeightPruneConfig(...))` or with the config's fields as keywords
    (`prune_weights(model, data, pattern="2:4", epochs=2)`). `teacher` switches on distillation.
    `scorer(model, layers)` returns per-weight scores; default `importance.weight_scores` with the
    config's criterion on `calib_batches` training batches. Pruned weights stay pruned in later rounds.
    After each masking outside training (one-shot, iterative rounds) BatchNorm statistics are
    re-estimated on `bn_batches` batches; with `epochs=0` the result is the masks alone. Without data
    (`data=None`, a data-free criterion such as l1) `example` inputs name the layers and nothing trains.
    `loss_fn(outputs, targets)` is the label term of fine-tuning and of gradient criteria (default
    cross-entropy).
    """
    cfg = _merged_config(config, overrides)
    layers = _layers_to_mask(model, cfg, data.sample_inputs() if data is not None else example)
    masking = _Masking(model, data, cfg, layers, scorer or _default_scorer(data, cfg, loss_fn), loss_fn)

    torch.manual_seed(cfg.seed)
    # The same seeded order as hwprune.finetune.train.train, so every schedule sees the same batches.
    batches = data.epochs(cfg.epochs, cfg.batch_size, cfg.seed) if data is not None else []

    if cfg.schedule == "one-shot":
        masking.mask_to(cfg.sparsity, 0)
        masking.recalibrate()
        train_steps(model, batches, cfg.lr, teacher, desc="fine-tuning", progress=progress, loss_fn=loss_fn)
    elif cfg.schedule == "iterative":
        _iterative(masking, batches, teacher, progress)
    else:
        _gradual(masking, batches, teacher, progress)
    reapply_masks(model)
    model.eval()
    return WeightPruneResult(model, cfg, masking.history)
