"""Every pruning method on equal terms: criterion x granularity x selection rule x schedule.

The hardware budget path (granularity `channel`, selection `budget`) is `prune.prune`'s closed loop. This
module runs every other combination with the same set-up, the same fine-tuning (distillation from the dense
model) and the same final measurement and report, so methods compare like for like:

- granularity `channel` | `head` | `block`: units physically removed (groups.py / granularity.py), scored
  by the criterion, chosen by the selection rule (select.py), round by round as the schedule says, with
  BatchNorm re-estimation and a share of the fine-tuning after every round;
- granularity `unstructured` | `N:M` | `blockRxC` (`block-sparse` = block4x1): weights masked (sparsity.py),
  saved compressed. Masks do not make dense kernels faster: the report's measured latency says so;
- selection `hierarchical`: blocks first, then channels, then weights within what remains, each level
  removing `--sparsity` of what it sees.

Schedules: `one-shot` (one cut, then fine-tuning); `iterative` (`rounds` cuts, each removing the same share
of what is left, fine-tuning between; Han et al. 2015); `gradual` (Zhu & Gupta 2017's cubic ramp: at
weight level re-masked every few steps during training, at unit level the ramp sampled at `rounds` cuts);
`threshold-decay` (round r removes units whose score is below `threshold * decay**r`, scores recomputed
each round; with decay < 1 early rounds cut hardest).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from hwprune.apply.channels import apply_plan, recalibrate_bn
from hwprune.core.budget import parse_budgets
from hwprune.core.errors import HwpruneError
from hwprune.cost.resources import count
from hwprune.finetune.train import epoch_batches, train_steps
from hwprune.groups.analysis import analyze
from hwprune.importance.criteria import compute_scores, get_criterion, normalized, weight_scores
from hwprune.plan.plan import make_plan
from hwprune.plan.select import select

GRANULARITIES = {
    "channel": "conv filters / linear neurons with everything coupled to them (DepGraph groups), removed",
    "head": "attention heads of nn.MultiheadAttention (e.g. torchvision ViT), removed",
    "block": "whole residual blocks (x + f(x)) replaced by identity",
    "unstructured": "individual weights, masked; saved compressed (bitmask or CSR)",
    "N:M": "N kept in every M consecutive weights, e.g. 2:4 (sparse tensor cores), masked",
    "block-sparse": "blocks of weights, e.g. block4x1 or block8x8 (block-sparse = block4x1), masked",
}
SCHEDULES = {
    "one-shot": "prune once, then fine-tune",
    "iterative": "--rounds rounds of prune -> fine-tune, each removing the same share of what is left",
    "gradual": "sparsity ramps up on a cubic schedule during fine-tuning (Zhu & Gupta 2017)",
    "threshold-decay": "each round removes units scoring below threshold x decay^round (needs --threshold)",
}
UNIT_KINDS = ("channel", "head", "block")


def parse_granularity(text: str):
    """(`channel` | `head` | `block` | `weight`, the weight Pattern or None)."""
    from hwprune.apply.sparsity import parse_pattern

    t = text.strip()
    if t in UNIT_KINDS:
        return t, None
    if t in ("block-sparse", "blocksparse"):
        t = "block4x1"
    if t == "N:M":
        raise HwpruneError("--granularity N:M: give the numbers, e.g. 2:4 or 4:8")
    try:
        return "weight", parse_pattern(t)
    except HwpruneError:
        raise HwpruneError(
            f"unknown granularity '{text}'; choose channel, head, block, unstructured, N:M (e.g. 2:4) or "
            "block-sparse (e.g. block4x1, block8x8)"
        ) from None


def ramp(schedule: str, sparsity: float, rounds: int) -> list[float]:
    """Fraction of the original units removed after each round."""
    from hwprune.apply.sparsity import gradual_sparsity, iterative_targets

    if schedule == "one-shot":
        return [sparsity]
    if schedule == "iterative":
        return iterative_targets(sparsity, rounds)
    if schedule == "gradual":
        return [gradual_sparsity(r, 0, rounds, sparsity) for r in range(1, rounds + 1)]
    raise HwpruneError(f"schedule '{schedule}' has no sparsity ramp")


@dataclass
class MethodRecord:
    """What a method removed, round by round: the `plan.json` of a non-budget run (plain data)."""

    granularity: str
    selection: str
    schedule: str
    criterion: str
    sparsity: float | None
    rounds: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"format": "hwprune-method/1", **asdict(self)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))


def _rule_kwargs(cfg, step: float) -> dict:
    """Keyword arguments of the selection rule for one round: `step` is this round's share to remove
    (ratio) or its threshold (threshold rules)."""
    if cfg.schedule == "threshold-decay" or cfg.selection == "threshold":
        return {"threshold": step}
    if cfg.selection == "ratio":
        return {"sparsity": step, "scope": cfg.scope}
    return {}


def _steps(cfg) -> list[float]:
    """Per round: the share of the *current* units to remove (ratio) or the threshold."""
    if cfg.schedule == "threshold-decay":
        return [cfg.threshold * cfg.decay**r for r in range(cfg.rounds)]
    if cfg.selection != "ratio":
        return [cfg.threshold] if cfg.selection == "threshold" else [0.0]
    targets = ramp(cfg.schedule, cfg.sparsity, cfg.rounds)
    out, before = [], 0.0
    for s in targets:
        out.append(1 - (1 - s) / (1 - before) if before < 1 else 0.0)
        before = s
    return out


def _cut_units(kind: str, model, example, criterion, calib, cfg, rule: str, kwargs: dict):
    """One round at unit granularity: score, select, remove. Returns (model, {set: units removed})."""
    from hwprune.apply import granularity as gr

    if kind == "channel":
        analysis = analyze(model, example, min_keep=0.0)
        scores = compute_scores(model, analysis, criterion, calib, seed=cfg.seed, params=cfg.criterion_params)
        keep = select(rule, normalized(scores, criterion), **kwargs)
        widths = {g: int(k.sum()) for g, k in keep.items()}
        sizes = {g.id: g.size for g in analysis.groups}
        model = apply_plan(model, example, make_plan(widths, scores, sizes))
        return model, {g: sizes[g] - w for g, w in widths.items() if w < sizes[g]}
    if kind == "head":
        scores = gr.score_heads(model, example, criterion, calib, seed=cfg.seed, params=cfg.criterion_params)
        crit = get_criterion(criterion)
        sets = {n: s.double().numpy() for n, s in scores.items()}
        if not crit.comparable:  # global ranking needs comparable units: each layer relative to its mean
            sets = {n: s / max(float(s.mean()), 1e-12) for n, s in sets.items()}
        keep = select(rule, sets, **kwargs)
        drop = {n: [int(i) for i in np.flatnonzero(~k)] for n, k in keep.items()}
        if any(drop.values()):
            model = gr.remove_heads(model, drop)
        return model, {n: len(d) for n, d in drop.items() if d}
    blocks, scores = gr.score_blocks(model, example, criterion, calib, seed=cfg.seed, params=cfg.criterion_params)
    if not blocks:
        raise HwpruneError("the model has no removable residual block (x + f(x) with equal shapes)")
    kw = {k: v for k, v in kwargs.items() if k != "scope"}  # blocks are one set: ratio is over all of them
    keep = select(rule, {"blocks": np.asarray(scores, dtype=np.float64)}, min_keep=0, **kw)["blocks"]
    model = copy.deepcopy(model)
    removed = [b.name for b, k in zip(blocks, keep) if not k]
    for name in removed:
        gr._set_module(model, name, nn.Identity())
    return model, {name: 1 for name in removed}


def _mask_weights(model, example, criterion, calib, cfg, pattern, rule: str, kwargs: dict) -> dict:
    """One round at weight level with a score rule (threshold, mean-threshold): masks nested on earlier ones."""
    from hwprune.apply.sparsity import apply_masks, get_masks, prunable_layers

    if pattern.kind != "unstructured":
        raise HwpruneError(f"selection '{rule}' works on unstructured weights; {pattern.text} is chosen by ratio")
    layers = prunable_layers(model, example)
    scores = weight_scores(model, criterion, calib, params=cfg.criterion_params, layers=layers)
    current = get_masks(model)
    flat = {n: s.detach().double().flatten().cpu().numpy() for n, s in scores.items()}
    for n in flat:
        if n in current:
            flat[n][~current[n].flatten().cpu().numpy()] = -np.inf
    keep = select(rule, flat, **kwargs)
    masks = {n: torch.from_numpy(k.reshape(scores[n].shape)) for n, k in keep.items()}
    apply_masks(model, masks, pattern)
    return {n: int((~m).sum()) for n, m in masks.items()}


def run_method(cfg, progress: bool = True):
    """Prune with `cfg`'s granularity, selection and schedule; fine-tune; measure; report (nothing written)."""
    from hwprune.pipeline.prune import PruneResult, _calibration, _log, final_figures, setup

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    t_start = time.perf_counter()
    stages: dict[str, float] = {}
    budgets = parse_budgets(cfg.budget) if cfg.budget else []
    data, resolved, target = setup(cfg, budgets, progress)
    dense, example = resolved.model, resolved.example_inputs
    dense.eval()
    criterion = cfg.criterion or ("taylor" if data is not None else "l1")
    kind, pattern = parse_granularity(cfg.granularity)
    if kind == "weight" and data is None:
        raise HwpruneError("weight-level pruning re-estimates statistics and fine-tunes on data: give --data")
    calib = _calibration(cfg, data, dense, example)[: cfg.calib_batches]
    bn_batches = calib if data is not None else []
    t_dense = target.time_models([dense], example)[0]
    dense_figures = {
        b.kind: t_dense.median if b.kind == "latency" else count(b.kind, dense, example, target) for b in budgets
    }
    record = MethodRecord(cfg.granularity, cfg.selection, cfg.schedule, criterion, cfg.sparsity)

    t0 = time.perf_counter()
    model = copy.deepcopy(dense)
    ft = epoch_batches(data, cfg.finetune_epochs, 128, cfg.seed) if data is not None else []
    acc_oneshot = None
    if kind == "weight" and cfg.selection == "ratio":
        from hwprune.apply.sparsity import WeightPruneConfig, prune_weights

        if cfg.finetune_epochs == 0 or cfg.schedule == "one-shot":
            probe = prune_weights(copy.deepcopy(dense), data, _weight_config(cfg, pattern, criterion, epochs=0))
            acc_oneshot = _accuracy(probe.model, data)
        wcfg: WeightPruneConfig = _weight_config(cfg, pattern, criterion, cfg.finetune_epochs)
        res = prune_weights(model, data, wcfg, teacher=dense, progress=progress)
        record.rounds = res.history
        record.sparsity = wcfg.sparsity
    else:
        levels = ["block", "channel", "weight"] if cfg.selection == "hierarchical" else [kind]
        steps = [cfg.sparsity] if cfg.selection == "hierarchical" else _steps(cfg)
        rule = "ratio" if cfg.selection == "hierarchical" else cfg.selection
        if cfg.schedule == "threshold-decay":
            rule = "threshold"
        chunks = np.array_split(np.arange(len(ft)), len(levels) * len(steps)) if ft else []
        r = 0
        for level in levels:
            for step in steps:
                kw = _rule_kwargs(cfg, step) if cfg.selection != "hierarchical" else {"sparsity": step}
                if level == "block" and cfg.selection == "hierarchical" and not _has_blocks(model, example):
                    record.rounds.append({"round": r + 1, "level": level, "skipped": "no removable residual block"})
                    r += 1
                    continue
                if level == "weight":
                    from hwprune.apply.sparsity import parse_pattern

                    removed = _mask_weights(
                        model, example, criterion, calib, cfg, pattern or parse_pattern("unstructured"), rule, kw
                    )
                else:
                    model, removed = _cut_units(level, model, example, criterion, calib, cfg, rule, kw)
                recalibrate_bn(model, bn_batches)
                if r == 0 and data is not None:
                    acc_oneshot = _accuracy(model, data)
                record.rounds.append({"round": r + 1, "level": level, "rule": rule, **kw, "removed": removed})
                _log(progress, f"  round {r + 1} ({level}, {rule} {kw}): removed {sum(removed.values())} units")
                if len(chunks):
                    train_steps(
                        model,
                        [ft[i] for i in chunks[r]],
                        cfg.lr,
                        dense,
                        desc=f"fine-tuning round {r + 1}",
                        progress=progress,
                    )
                r += 1
    from hwprune.apply.sparsity import reapply_masks

    reapply_masks(model)  # re-zero masked weights now, not inside the first timed call after fine-tuning
    stages["prune_finetune_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    figures = final_figures(dense, model, example, target, data, t_dense.median, budgets, cfg.budget, dense_figures)
    figures["pruned"]["accuracy_oneshot"] = acc_oneshot
    stages["evaluate_s"] = time.perf_counter() - t0
    stages["total_s"] = time.perf_counter() - t_start
    from hwprune.apply.sparsity import sparsity_of

    stats = sparsity_of(model)
    notes = []
    if kind == "weight" or cfg.selection == "hierarchical":
        notes.append(
            "Weight masks leave every tensor dense: on this target the kernels do the same work, so the measured "
            "latency is what it is (a speed-up needs sparse kernels, e.g. 2:4 on an Ampere+ GPU)."
        )
    report = {
        "format": "hwprune-report/1",
        "model": cfg.model,
        "settings": {**asdict(cfg), "criterion": criterion},
        **figures,
        "method": record.to_dict(),
        "weight_sparsity": {"overall": stats.overall, "zeros": stats.zeros, "total": stats.total},
        "notes": notes,
        "predicted_latency_ms": None,
        "predicted_ratio": None,
        "prediction_error": None,
        "latency_table": None,
        "loop": [],
        "groups": _group_widths(dense, model, example) if kind == "channel" else [],
        "data": data.description if data is not None else None,
        "stages": stages,
    }
    return PruneResult(model, dense, record, report, resolved)


def _weight_config(cfg, pattern, criterion: str, epochs: int):
    from hwprune.apply.sparsity import WeightPruneConfig

    return WeightPruneConfig(
        pattern=pattern.text,
        sparsity=None if pattern.kind == "nm" else cfg.sparsity,
        schedule=cfg.schedule,
        scope=cfg.scope,
        criterion=criterion,
        epochs=epochs,
        rounds=cfg.rounds,
        lr=cfg.lr,
        seed=cfg.seed,
    )


def _accuracy(model, data) -> float:
    from hwprune.evaluate.metrics import accuracy

    return accuracy(model, data.x_test, data.y_test)


def _group_widths(dense, pruned, example) -> list[dict]:
    """Dense vs pruned output width of every group root of the dense model."""
    analysis = analyze(dense, example, probe=False)
    mods = dict(pruned.named_modules())
    rows = []
    for g in analysis.groups:
        m = mods.get(g.id)
        width = getattr(m, "out_channels", getattr(m, "out_features", None))
        if width is not None:
            rows.append({"id": g.id, "size": g.size, "width": int(width)})
    return rows


def _has_blocks(model, example) -> bool:
    from hwprune.apply.granularity import find_blocks

    return bool(find_blocks(model, example))
