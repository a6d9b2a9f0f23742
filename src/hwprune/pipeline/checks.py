"""Validation of a PruneConfig: every message names the flag to change. Flags that only make sense with one
choice imply it (`--sparsity` with the default selection means `--selection ratio`)."""

from __future__ import annotations

import dataclasses
import math
import typing

import torch

from hwprune.core.budget import parse_budgets
from hwprune.core.errors import HwpruneError
from hwprune.pipeline.granularity import SCHEDULES, check_criterion, parse_granularity
from hwprune.plan.allocate import get_allocator
from hwprune.plan.select import get_selection

#: The trust region the hw allocator keeps when the plan will be fine-tuned: fixed plans at 0.15 of dense
#: latency fine-tuned (4 epochs KD, 3 seeds) to 98.82% unrestricted, 98.94% uniform, 99.05% within 0.75x
#: (benchmarks/results/allocators.md); without fine-tuning the unrestricted knapsack keeps the most accuracy.
TRUST = 0.75


def _imply_selection(m) -> None:
    """The default selection is the hardware allocator, which plans channel widths in one shot; a ratio, a
    threshold or a weight pattern given without a selection says which rule the user means."""
    if m.selection != "budget":
        return
    kind, pattern = parse_granularity(m.granularity)
    if m.sparsity is not None or (pattern is not None and pattern.kind == "nm"):
        m.selection = "ratio"
    elif m.threshold is not None and m.schedule != "threshold-decay" or m.schedule == "threshold-decay":
        m.selection = "threshold"


class FieldTypeError(HwpruneError):
    """A config value of the wrong type, or an unknown key: `from_dict` says which file or mapping it came from."""


def _bad(obj, name: str, why: str, error: type[HwpruneError] = HwpruneError) -> HwpruneError:
    """'finetune.lr -1.0: why (--lr)': the Python name and the command-line flag, for either kind of user."""
    section = type(obj).__name__.removesuffix("Config").lower()
    meta = next(f.metadata for f in dataclasses.fields(obj) if f.name == name)
    flag = meta.get("flag") or "--" + name.replace("_", "-")
    where = name if section == "prune" else f"{section}.{name}"
    return error(f"{where} {getattr(obj, name)!r}: {why} ({flag})")


def _kind_ok(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


_KIND_NAMES = {int: "a whole number", float: "a number", str: "a string", dict: "a mapping", bool: "true or false"}


def check_types(obj) -> None:
    """Every field of a config dataclass against its annotation (ints are accepted for floats, bools are
    not ints), and every number finite: a recipe's `epochs: lots` or a `--threshold nan` fails here, before
    any work starts, not as a TypeError (or a model pruned to width 1) much later."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            continue
        args = typing.get_args(hints[f.name])
        kinds = [t for t in args if t is not type(None)] or [hints[f.name]]
        optional = type(None) in args
        if value is None and optional:
            continue
        if not any(_kind_ok(value, k) for k in kinds):
            expected = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            raise _bad(obj, f.name, f"expected {expected}, got {type(value).__name__}", FieldTypeError)
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(obj, f.name, "must be a finite number", FieldTypeError)


def _check_method(m) -> None:
    get_selection(m.selection)
    kind, pattern = parse_granularity(m.granularity)
    if m.schedule not in SCHEDULES:
        raise _bad(m, "schedule", f"unknown schedule; choose one of: {', '.join(SCHEDULES)}")
    if m.selection == "budget" and (kind != "channel" or m.schedule != "one-shot"):
        raise HwpruneError(
            "--selection budget (the hardware allocator) plans channel widths in one shot; for "
            f"--granularity {m.granularity} / --schedule {m.schedule} give --sparsity F (the fraction to remove)"
        )
    nm = pattern is not None and pattern.kind == "nm"
    if m.selection in ("ratio", "hierarchical") and m.sparsity is None and not nm:
        raise HwpruneError(f"--selection {m.selection} needs --sparsity F (the fraction of units to remove)")
    if m.sparsity is not None and not 0 <= m.sparsity < 1:
        raise _bad(m, "sparsity", "the fraction to remove must be in [0, 1)")
    if (m.selection == "threshold" or m.schedule == "threshold-decay") and m.threshold is None:
        raise HwpruneError("--selection threshold and --schedule threshold-decay need --threshold T")
    if m.schedule == "threshold-decay" and not 0 < m.decay <= 1:
        raise _bad(m, "decay", "must be in (0, 1]")
    if m.schedule in ("iterative", "gradual") and m.selection != "ratio":
        raise HwpruneError(f"--schedule {m.schedule} ramps a --sparsity: use it with --selection ratio")
    if m.rounds < 1:
        raise _bad(m, "rounds", "must be at least 1")
    if m.scope not in ("layer", "global"):
        raise _bad(m, "scope", "must be layer or global")
    check_criterion(m)  # the criterion against the granularity (language-model methods: pipeline.granularity)


def trust(cfg) -> float:
    """The trust region in force: as given, else TRUST when the plan will be fine-tuned and 0 when not."""
    if cfg.loop.trust is not None:
        return cfg.loop.trust
    return TRUST if cfg.finetune.epochs > 0 else 0.0


def _check_loop(lp) -> None:
    if lp.trust is not None and not 0 <= lp.trust <= 1:
        raise _bad(lp, "trust", "must be in [0, 1] (0: no trust region, 1: the uniform plan)")
    if not 0 < lp.min_keep <= 1:
        raise _bad(lp, "min_keep", "the fraction of a group always kept must be in (0, 1]")
    if lp.max_iters < 1:
        raise _bad(lp, "max_iters", "the closed loop needs at least 1 iteration")
    if lp.calib_batches < 1:
        raise _bad(lp, "calib_batches", "must be at least 1")
    get_allocator(lp.allocator)
    if lp.value not in ("auto", "scores", "sensitivity"):
        raise _bad(lp, "value", "must be auto, scores or sensitivity")


def _check_rest(cfg) -> None:
    ft, tg = cfg.finetune, cfg.target
    if ft.epochs < 0:
        raise _bad(ft, "epochs", "must be 0 (no fine-tuning) or more")
    if ft.lr <= 0:
        raise _bad(ft, "lr", "the learning rate must be positive")
    if ft.batch_size < 1:
        raise _bad(ft, "batch_size", "must be at least 1")
    if tg.threads is not None and tg.threads < 1:
        raise _bad(tg, "threads", "give at least 1 (or none: the physical cores)")
    if cfg.budget is not None:
        parse_budgets(cfg.budget)  # a malformed or contradicting budget fails now, before the model is read


def check_config(cfg) -> None:
    """Validate (and complete the implied choices of) a PruneConfig in place."""
    for obj in (cfg, cfg.method, cfg.loop, cfg.finetune, cfg.target):
        check_types(obj)
    _imply_selection(cfg.method)
    if cfg.budget is None and cfg.method.selection == "budget":
        cfg.budget = "latency=0.5"
    _check_method(cfg.method)
    _check_rest(cfg)
    _check_loop(cfg.loop)


def check_data(cfg, data) -> None:
    """The settings that need data, against whether the run has any."""
    if cfg.finetune.epochs > 0 and data is None:
        raise HwpruneError(
            f"fine-tuning for {cfg.finetune.epochs} epoch(s) needs data to train on: pass data=... to hwprune.prune "
            "(--data on the command line), or set finetune epochs to 0 (--finetune-epochs 0)"
        )
    if cfg.loop.value == "sensitivity" and data is None:
        raise HwpruneError(
            "value 'sensitivity' (--value) measures calibration loss: pass data=... to hwprune.prune (--data on the "
            "command line), or use value 'scores'"
        )


def check_weights(model) -> None:
    """NaN or inf in a parameter or buffer poisons every score, measurement and fine-tuning step: refuse it
    by name (a diverged training run, or a checkpoint saved after one)."""
    for kind, items in (("weights", model.named_parameters()), ("buffers", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = "NaN" if bool(torch.isnan(t).any()) else "inf"
                raise HwpruneError(f"model {kind} contain {bad} in {name}: load a checkpoint from before it diverged")


def check_outputs(out, what: str) -> None:
    """The model's outputs on `what` are finite (tensors, or the tensors of a tuple, list or dict)."""
    values = out.values() if hasattr(out, "keys") else out if isinstance(out, (tuple, list)) else [out]
    for t in values:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = "NaN" if bool(torch.isnan(t).any()) else "inf"
            raise HwpruneError(f"the model's outputs on {what} contain {bad}: check its weights and forward()")


def fit_error(model, inputs, e: Exception, what: str) -> HwpruneError:
    """Why `inputs` do not run through `model`, in one line; integer inputs to a float model say so."""
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
    got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point() and param is not None and "type" in msg:
        return HwpruneError(
            f"{what} are {str(inputs.dtype).removeprefix('torch.')} but the model's weights are "
            f"{str(param.dtype).removeprefix('torch.')}: pass float inputs (e.g. x.float())"
        )
    return HwpruneError(f"{what} of shape {got} do not fit the model: {msg[:200]}")
