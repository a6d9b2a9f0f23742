"""Validation of a PruneConfig: every message names the flag to change. Flags that only make sense with one
choice imply it (`--sparsity` with the default selection means `--selection ratio`)."""

from __future__ import annotations

from hwprune.core.errors import HwpruneError
from hwprune.importance import get_criterion
from hwprune.pipeline.granularity import SCHEDULES, parse_granularity
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


def _check_method(m) -> None:
    get_selection(m.selection)
    kind, pattern = parse_granularity(m.granularity)
    if m.schedule not in SCHEDULES:
        raise HwpruneError(f"unknown schedule '{m.schedule}' for --schedule; choose one of: {', '.join(SCHEDULES)}")
    if m.selection == "budget" and (kind != "channel" or m.schedule != "one-shot"):
        raise HwpruneError(
            "--selection budget (the hardware allocator) plans channel widths in one shot; for "
            f"--granularity {m.granularity} / --schedule {m.schedule} give --sparsity F (the fraction to remove)"
        )
    nm = pattern is not None and pattern.kind == "nm"
    if m.selection in ("ratio", "hierarchical") and m.sparsity is None and not nm:
        raise HwpruneError(f"--selection {m.selection} needs --sparsity F (the fraction of units to remove)")
    if m.sparsity is not None and not 0 <= m.sparsity < 1:
        raise HwpruneError(f"--sparsity {m.sparsity}: the fraction to remove must be in [0, 1)")
    if (m.selection == "threshold" or m.schedule == "threshold-decay") and m.threshold is None:
        raise HwpruneError("--selection threshold and --schedule threshold-decay need --threshold T")
    if m.schedule == "threshold-decay" and not 0 < m.decay <= 1:
        raise HwpruneError("--decay must be in (0, 1]")
    if m.schedule in ("iterative", "gradual") and m.selection != "ratio":
        raise HwpruneError(f"--schedule {m.schedule} ramps a --sparsity: use it with --selection ratio")
    if m.rounds < 1:
        raise HwpruneError("--rounds must be at least 1")
    if m.scope not in ("layer", "global"):
        raise HwpruneError("--scope must be layer or global")
    if m.criterion:
        get_criterion(m.criterion)


def trust(cfg) -> float:
    """The trust region in force: as given, else TRUST when the plan will be fine-tuned and 0 when not."""
    if cfg.loop.trust is not None:
        return cfg.loop.trust
    return TRUST if cfg.finetune.epochs > 0 else 0.0


def _check_loop(lp) -> None:
    if lp.trust is not None and not 0 <= lp.trust <= 1:
        raise HwpruneError(f"--trust {lp.trust}: must be in [0, 1] (0: no trust region, 1: the uniform plan)")
    if not 0 < lp.min_keep <= 1:
        raise HwpruneError("--min-keep must be in (0, 1]")
    if lp.max_iters < 1:
        raise HwpruneError("--max-iters must be at least 1")
    if lp.calib_batches < 1:
        raise HwpruneError("--calib-batches must be at least 1")
    get_allocator(lp.allocator)
    if lp.value not in ("auto", "scores", "sensitivity"):
        raise HwpruneError("--value must be auto, scores or sensitivity")


def check_config(cfg) -> None:
    """Validate (and complete the implied choices of) a PruneConfig in place."""
    _imply_selection(cfg.method)
    if cfg.budget is None and cfg.method.selection == "budget":
        cfg.budget = "latency=0.5"
    _check_method(cfg.method)
    if cfg.finetune.epochs < 0:
        raise HwpruneError("--finetune-epochs must be 0 or more")
    if cfg.finetune.lr <= 0:
        raise HwpruneError(f"--lr {cfg.finetune.lr}: the learning rate must be positive")
    if cfg.finetune.batch_size < 1:
        raise HwpruneError("--finetune-batch-size must be at least 1")
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
