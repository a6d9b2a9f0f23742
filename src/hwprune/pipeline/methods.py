"""Every pruning method other than the hardware budget, on equal terms with it.

Criterion x granularity x selection rule x schedule, with the same set-up, the same fine-tuning (distillation
from the dense model) and the same final measurement and report as the budget method (pipeline.budget):

- granularity `channel` | `head` | `block` | `layer`: units physically removed (groups / apply.heads /
  apply.blocks / apply.layers, a language model's decoder layers), scored by the criterion, chosen by the
  selection rule (plan.select), round by round as the schedule says, with BatchNorm re-estimation and a share
  of the fine-tuning after every round;
- granularity `unstructured` | `N:M` | `blockRxC` (`block-sparse` = block4x1): weights masked
  (finetune.weights), saved compressed. Masks do not make dense kernels faster: the report's measured
  latency says so. On a transformers model with decoder blocks, `--criterion magnitude | wanda | sparsegpt`
  (one-shot) masks block by block on calibration text instead (apply.sequential, as in the Wanda and
  SparseGPT papers), and the report gives held-out perplexity dense and pruned;
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from hwprune.apply.blocks import find_blocks, score_blocks
from hwprune.apply.channels import apply_plan, recalibrate_bn
from hwprune.apply.common import set_module
from hwprune.apply.heads import remove_heads, score_heads
from hwprune.apply.layers import DEFAULT_LAYER_CRITERION, remove_layers, score_layers
from hwprune.apply.masks import (
    apply_masks,
    get_masks,
    parse_pattern,
    prunable_layers,
    reapply_masks,
    resolve_sparsity,
    sparsity_of,
)
from hwprune.apply.sequential import SequentialConfig, prune_sequential
from hwprune.core.errors import HwpruneError
from hwprune.finetune.train import train_steps
from hwprune.finetune.weights import WeightPruneConfig, prune_weights
from hwprune.groups.analysis import analyze
from hwprune.importance import compute_scores, get_criterion, normalized, weight_scores
from hwprune.pipeline.context import METHODS, Outcome, Run
from hwprune.pipeline.granularity import SEQUENTIAL, parse_granularity, ramp
from hwprune.pipeline.language import batch_perplexity, has_decoder_blocks, is_causal_lm, perplexity_note
from hwprune.plan.plan import make_plan
from hwprune.plan.select import select
from hwprune.report.schema import GroupWidth

#: Weight masks leave tensors dense: said in every weight-level report.
DENSE_KERNELS_NOTE = (
    "Weight masks leave every tensor dense: on this target the kernels do the same work, so the measured "
    "latency is what it is (a speed-up needs sparse kernels, e.g. 2:4 on an Ampere+ GPU)."
)


@dataclass
class MethodRecord:
    """What a method removed, round by round: the `plan.json` of a non-budget run (plain data)."""

    granularity: str
    selection: str
    schedule: str
    criterion: str
    sparsity: float | None
    rounds: list[dict] = field(default_factory=list)
    #: A causal LM's held-out perplexity per token (`pipeline.language.batch_perplexity`): dense, pruned.
    perplexity: dict | None = None

    def to_dict(self) -> dict:
        return {"format": "hwprune-method/1", **asdict(self)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))


def _rule_kwargs(m, step: float) -> dict:
    """Keyword arguments of the selection rule for one round: `step` is this round's share to remove
    (ratio) or its threshold (threshold rules)."""
    if m.schedule == "threshold-decay" or m.selection == "threshold":
        return {"threshold": step}
    if m.selection == "ratio":
        return {"sparsity": step, "scope": m.scope}
    return {}


def _steps(m) -> list[float]:
    """Per round: the share of the *current* units to remove (ratio) or the threshold."""
    if m.schedule == "threshold-decay":
        return [m.threshold * m.decay**r for r in range(m.rounds)]
    if m.selection != "ratio":
        return [m.threshold] if m.selection == "threshold" else [0.0]
    targets = ramp(m.schedule, m.sparsity, m.rounds)
    out, before = [], 0.0
    for s in targets:
        out.append(1 - (1 - s) / (1 - before) if before < 1 else 0.0)
        before = s
    return out


def _cut_units(kind: str, model, run: Run, calib, rule: str, kwargs: dict):
    """One round at unit granularity: score, select, remove. Returns (model, {set: units removed})."""
    example, criterion, m, seed = run.example, run.criterion, run.cfg.method, run.cfg.seed
    common = {"seed": seed, "params": m.criterion_params, "loss_fn": run.loss_fn}
    if kind == "channel":
        analysis = analyze(model, example, min_keep=0.0)
        scores = compute_scores(model, analysis, criterion, calib, **common)
        keep = select(rule, normalized(scores, criterion), **kwargs)
        widths = {g: int(k.sum()) for g, k in keep.items()}
        sizes = {g.id: g.size for g in analysis.groups}
        plan = make_plan(
            widths, scores, sizes, analysis.multiples, units=analysis.units
        )  # grouped convs: widths rounded to groups
        model = apply_plan(model, example, plan)
        return model, {g.id: g.size - g.width for g in plan.groups if g.width < g.size}
    if kind == "head":
        scores = score_heads(model, example, criterion, calib, **common)
        crit = get_criterion(criterion)
        sets = {n: s.double().numpy() for n, s in scores.items()}
        if not crit.comparable:  # global ranking needs comparable units: each layer relative to its mean
            sets = {n: s / max(float(s.mean()), 1e-12) for n, s in sets.items()}
        keep = select(rule, sets, **kwargs)
        drop = {n: [int(i) for i in np.flatnonzero(~k)] for n, k in keep.items()}
        if any(drop.values()):
            model = remove_heads(model, drop)
        return model, {n: len(d) for n, d in drop.items() if d}
    if kind == "layer":
        names, scores = score_layers(model, criterion, [x for x, _ in calib], seed)
        kw = {k: v for k, v in kwargs.items() if k != "scope"}  # the layers are one set
        keep = select(rule, {"layers": np.asarray(scores, dtype=np.float64)}, min_keep=1, **kw)["layers"]
        drop = [i for i, k in enumerate(keep) if not k]
        model = remove_layers(copy.deepcopy(model), drop)
        return model, {names[i]: 1 for i in drop}
    blocks, scores = score_blocks(model, example, criterion, calib, **common)
    if not blocks:
        raise HwpruneError("the model has no removable residual block (x + f(x) with equal shapes)")
    kw = {k: v for k, v in kwargs.items() if k != "scope"}  # blocks are one set: ratio is over all of them
    keep = select(rule, {"blocks": np.asarray(scores, dtype=np.float64)}, min_keep=0, **kw)["blocks"]
    model = copy.deepcopy(model)
    removed = [b.name for b, k in zip(blocks, keep, strict=True) if not k]
    for name in removed:
        set_module(model, name, nn.Identity())
    return model, {name: 1 for name in removed}


def _mask_weights(model, run: Run, calib, pattern, rule: str, kwargs: dict) -> dict:
    """One round at weight level with a score rule (threshold, mean-threshold): masks nested on earlier ones."""
    if pattern.kind != "unstructured":
        raise HwpruneError(f"selection '{rule}' works on unstructured weights; {pattern.text} is chosen by ratio")
    layers = prunable_layers(model, run.example)
    scores = weight_scores(
        model, run.criterion, calib, params=run.cfg.method.criterion_params, layers=layers, loss_fn=run.loss_fn
    )
    current = get_masks(model)
    flat = {n: s.detach().double().flatten().cpu().numpy() for n, s in scores.items()}
    for n in flat:
        if n in current:
            flat[n][~current[n].flatten().cpu().numpy()] = -np.inf
    keep = select(rule, flat, **kwargs)
    masks = {n: torch.from_numpy(k.reshape(scores[n].shape)) for n, k in keep.items()}
    apply_masks(model, masks, pattern)
    return {n: int((~m).sum()) for n, m in masks.items()}


def _record(run: Run) -> MethodRecord:
    m = run.cfg.method
    return MethodRecord(m.granularity, m.selection, m.schedule, run.criterion, m.sparsity)


def _finetune_batches(run: Run) -> list:
    ft = run.cfg.finetune
    return list(run.data.epochs(ft.epochs, ft.batch_size, run.cfg.seed)) if run.data is not None else []


def _sequential_applies(run: Run) -> bool:
    """Whether the weight method runs block by block (apply.sequential): a sequential criterion, one-shot, on a
    model with decoder blocks. `wanda` on other models (or on a schedule) is the element criterion; `magnitude`
    and `sparsegpt` exist only block by block."""
    m = run.cfg.method
    if run.criterion not in SEQUENTIAL:
        return False
    if has_decoder_blocks(run.dense):
        return run.criterion != "wanda" or (m.schedule == "one-shot" and m.scope == "layer")
    if run.criterion == "wanda":
        return False
    raise HwpruneError(
        f"--criterion {run.criterion} prunes a transformers model's decoder blocks one after another; "
        f"{type(run.dense).__name__} has none: use --criterion l1 (|w|) or wanda for weight masks on any model"
    )


def _sequential(run: Run) -> Outcome:
    """Magnitude, Wanda or SparseGPT block by block on the run's calibration batches, one-shot (apply.sequential);
    fine-tuning, if asked, follows in the pipeline with the masks held."""
    m = run.cfg.method
    _, pattern = parse_granularity(m.granularity)
    sparsity = resolve_sparsity(pattern, None if pattern.kind == "nm" else m.sparsity)
    n = run.cfg.loop.calib_batches
    calib = [x for x, _ in run.calibration(n, run.cfg.seed)[:n]]
    cfg = SequentialConfig(
        method=run.criterion, pattern=pattern.text, sparsity=None if pattern.kind == "nm" else sparsity
    )
    model = copy.deepcopy(run.dense)
    masks = prune_sequential(model, calib, cfg)
    run.log(f"  {run.criterion} {pattern.text}: {len(masks)} Linear layers masked block by block")
    record = _record(run)
    record.sparsity = sparsity
    record.rounds.append(
        {
            "round": 1,
            "level": "weight",
            "method": run.criterion,
            "pattern": pattern.text,
            "calibration_batches": len(calib),
            "removed": {k: int((~v).sum()) for k, v in masks.items()},
        }
    )
    notes = [DENSE_KERNELS_NOTE]
    _add_perplexity(run, model, record, notes, "one-shot (before any fine-tuning)")
    return Outcome(model, record, run.score(model), finetuned=False, sections={"notes": notes})


def _add_perplexity(run: Run, model, record: MethodRecord, notes: list[str], when: str) -> None:
    """A causal LM's held-out perplexity, dense and pruned, in the method record and a report note."""
    if run.data is None or not is_causal_lm(run.dense):
        return
    dense, pruned = batch_perplexity(run.dense, run.data.validation()), batch_perplexity(model, run.data.validation())
    if dense is None or pruned is None:
        return
    record.perplexity = {"dense": dense.to_dict(), "pruned": pruned.to_dict(), "when": when}
    notes.append(perplexity_note(dense, pruned, when))
    run.log(f"  {notes[-1]}")


@METHODS.register("weights")
def weights_method(run: Run) -> Outcome:
    """Weights masked to a pattern at a ratio, on a schedule during fine-tuning (finetune.weights); language
    models' decoder blocks one after another with a sequential criterion (`_sequential`)."""
    if _sequential_applies(run):
        return _sequential(run)
    m, ft = run.cfg.method, run.cfg.finetune
    _, pattern = parse_granularity(m.granularity)
    record = _record(run)
    oneshot = None
    if ft.epochs == 0 or m.schedule == "one-shot":
        probe = prune_weights(
            copy.deepcopy(run.dense),
            run.data,
            _weight_config(run, pattern, 0),
            example=run.example,
            loss_fn=run.loss_fn,
        )
        oneshot = run.score(probe.model)
    wcfg = _weight_config(run, pattern, ft.epochs)
    model = copy.deepcopy(run.dense)
    res = prune_weights(
        model, run.data, wcfg, teacher=run.dense, progress=run.progress, example=run.example, loss_fn=run.loss_fn
    )
    record.rounds, record.sparsity = res.history, wcfg.sparsity
    return Outcome(res.model, record, oneshot, finetuned=True, sections=_weight_sections(res.model))


def _weight_sections(model) -> dict:
    return {"notes": [DENSE_KERNELS_NOTE]}


def weight_sparsity(model) -> dict:
    stats = sparsity_of(model)
    return {"overall": stats.overall, "zeros": stats.zeros, "total": stats.total}


def _one_round(run: Run, model, level: str, pattern, calib, rule: str, kw: dict):
    if level == "weight":
        return model, _mask_weights(model, run, calib, pattern or parse_pattern("unstructured"), rule, kw)
    return _cut_units(level, model, run, calib, rule, kw)


def _rounds(run: Run, levels: list[str], steps: list[float], rule: str, kwargs_of) -> Outcome:
    """Each level x step: cut (or mask), re-estimate BN, fine-tune on this round's share of the batches."""
    m = run.cfg.method
    _, pattern = parse_granularity(m.granularity)
    calib = run.calibration(run.cfg.loop.calib_batches, run.cfg.seed)[: run.cfg.loop.calib_batches]
    bn_batches = calib if run.data is not None else []
    ft = _finetune_batches(run)
    chunks = np.array_split(np.arange(len(ft)), len(levels) * len(steps)) if ft else []
    record, model, oneshot, r = _record(run), copy.deepcopy(run.dense), None, 0
    for level in levels:
        for step in steps:
            kw = kwargs_of(step)
            if level == "block" and m.selection == "hierarchical" and not find_blocks(model, run.example):
                record.rounds.append({"round": r + 1, "level": level, "skipped": "no removable residual block"})
                r += 1
                continue
            model, removed = _one_round(run, model, level, pattern, calib, rule, kw)
            recalibrate_bn(model, bn_batches)
            if r == 0:
                oneshot = run.score(model)
            record.rounds.append({"round": r + 1, "level": level, "rule": rule, **kw, "removed": removed})
            run.log(f"  round {r + 1} ({level}, {rule} {kw}): removed {sum(removed.values())} units")
            if len(chunks):
                batches = [ft[i] for i in chunks[r]]
                train_steps(
                    model,
                    batches,
                    run.cfg.finetune.lr,
                    run.dense,
                    f"fine-tuning round {r + 1}",
                    run.progress,
                    loss_fn=run.loss_fn,
                )
            r += 1
    reapply_masks(model)  # re-zero masked weights now, not inside the first timed call after fine-tuning
    return Outcome(model, record, oneshot, finetuned=True)


@METHODS.register("units")
def units_method(run: Run) -> Outcome:
    """Channels, heads or blocks removed by a score rule, round by round as the schedule says."""
    m = run.cfg.method
    kind, _ = parse_granularity(m.granularity)
    if kind == "layer" and m.criterion is None:
        run.criterion = DEFAULT_LAYER_CRITERION  # the run's default (l2) scores weights, not whole layers
    rule = "threshold" if m.schedule == "threshold-decay" else m.selection
    out = _rounds(run, [kind], _steps(m), rule, lambda step: _rule_kwargs(m, step))
    if kind == "channel":
        out.sections["groups"] = _group_widths(run.dense, out.model, run.example)
    if kind == "layer":
        notes = out.sections.setdefault("notes", [])
        tuned = run.data is not None and run.cfg.finetune.epochs > 0  # _rounds fine-tunes between its rounds
        _add_perplexity(run, out.model, out.plan, notes, "after pruning and fine-tuning" if tuned else "one-shot")
    return out


@METHODS.register("hierarchical")
def hierarchical_method(run: Run) -> Outcome:
    """Blocks, then channels, then weights: each level removes --sparsity of what it sees."""
    m = run.cfg.method
    out = _rounds(run, ["block", "channel", "weight"], [m.sparsity], "ratio", lambda step: {"sparsity": step})
    out.sections.update(_weight_sections(out.model))
    if parse_granularity(m.granularity)[0] == "channel":
        out.sections["groups"] = _group_widths(run.dense, out.model, run.example)
    return out


def method_kind(cfg) -> str:
    """Which registered method a config runs."""
    kind, _ = parse_granularity(cfg.method.granularity)
    if cfg.method.selection == "budget":
        return "budget"
    if cfg.method.selection == "hierarchical":
        return "hierarchical"
    return "weights" if kind == "weight" and cfg.method.selection == "ratio" else "units"


def _weight_config(run: Run, pattern, epochs: int) -> WeightPruneConfig:
    m = run.cfg.method
    return WeightPruneConfig(
        pattern=pattern.text,
        sparsity=None if pattern.kind == "nm" else m.sparsity,
        schedule=m.schedule,
        scope=m.scope,
        criterion=run.criterion,
        epochs=epochs,
        rounds=m.rounds,
        lr=run.cfg.finetune.lr,
        seed=run.cfg.seed,
    )


def _group_widths(dense, pruned, example) -> list[GroupWidth]:
    """Dense vs pruned output width of every group root of the dense model."""
    analysis = analyze(dense, example, probe=False)
    mods = dict(pruned.named_modules())
    rows = []
    for g in analysis.groups:
        m = mods.get(g.id)
        width = getattr(m, "out_channels", getattr(m, "out_features", None))
        if width is not None:
            rows.append(GroupWidth(id=g.id, size=g.size, width=int(width)))
    return rows
