"""`hwprune prune` and `hwprune demo`. Their options are derived from the config dataclasses
(`pipeline.config.options`): the flag, the help text and the default each live once, on the field."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from hwprune.cli.outputs import check_out
from hwprune.cli.run import INPUT_KEYS, prune_spec, read_recipe, split_options
from hwprune.core.errors import HwpruneError
from hwprune.finetune import distributed
from hwprune.importance import list_criteria
from hwprune.pipeline.config import PruneConfig, flat_fields, options
from hwprune.pipeline.granularity import SCHEDULES, language_model_methods
from hwprune.pipeline.resume import RUN_JSON, STAGE
from hwprune.plan.select import SELECTIONS
from hwprune.report.files import budget_lines, text_table
from hwprune.report.schema import Report
from hwprune.zoo.specs import SPEC_HELP
from hwprune.zoo.userdata import DATA_HELP

DEMO_BATCH = 64
DEMO_FINETUNE_EPOCHS = 4
#: Options `bench`, `validate`, `calibrate` and `profile` share with `prune` (the model and where it runs).
SHARED = ("--target", "--threads")


def _help(text: str, default) -> str:
    text = text.format(
        criteria=", ".join(n for n, _, _ in list_criteria())
        + "; language models: "
        + ", ".join(dict(language_model_methods())),
        selections=", ".join(SELECTIONS.names()),
        schedules=", ".join(SCHEDULES),
    )
    return text if default is None or "default" in text else f"{text} (default {default})"


def add_config_options(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per config field. For `prune` (all fields) defaults are SUPPRESSed: a flag not given is
    absent from the namespace, so the config's own default (or a recipe's value) applies; the commands that
    take `only` some options get the config's defaults."""
    for o in options():
        if only is not None and o.flag not in only:
            continue
        default = argparse.SUPPRESS if only is None else o.default
        kw: dict = {"default": default, "help": _help(o.help, o.default), "dest": _dest(o)}
        if o.type is dict:
            kw.update(action="append", metavar=o.metavar)
        elif o.type is bool:  # --keep-best / --no-keep-best
            kw.update(action=argparse.BooleanOptionalAction)
        else:
            kw.update(type=o.type, metavar=o.metavar)
        p.add_argument(o.flag, **kw)


def _dest(o) -> str:
    return o.flag.lstrip("-").replace("-", "_")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"model spec: {SPEC_HELP}")
    p.add_argument("--batch-size", type=int, default=None, help="batch size latency is measured at (default 1)")
    p.add_argument(
        "--input-shape",
        default=None,
        help="one sample's shape, e.g. 3x224x224 (default: 3x224x224 for torchvision, the data's shape for examples)",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sequence of a text model's example inputs (default 128); part of the latency-table key",
    )


def prune_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--data", default=None, help=f"data for calibration, fine-tuning and the metric: {DATA_HELP}")
    p.add_argument(
        "--loss", default=None, help="path/to/file.py:fn, fn(outputs, targets) -> loss (default: cross-entropy)"
    )
    p.add_argument(
        "--metric", default=None, help="path/to/file.py:fn, fn(outputs, targets) -> batch mean (default top-1 accuracy)"
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="YAML file setting any of these options (keys as the flag names: criterion, granularity, selection, "
        "schedule, budget, finetune-epochs, data, ...); flags given on the command line win",
    )
    add_config_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or loop log, only the final table")
    p.add_argument(
        "--out", default=None, help="output directory (model/, plan.json, report.json, report.md, report.html)"
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help="continue a killed run from its checkpoint directory (OUT.ckpt, or its --checkpoint-dir): nothing is "
        "pruned again and fine-tuning goes on from the newest checkpoint; give the run's other options unchanged",
    )


def criterion_params(items: list[str] | dict | None) -> dict | None:
    if not items:
        return None
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise HwpruneError(f"--criterion-param {item!r}: expected KEY=VALUE, e.g. lambda=0.5")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise HwpruneError(f"--criterion-param {item!r}: the value must be a number") from None
    return out


def _settings(a: argparse.Namespace) -> tuple[dict, dict]:
    """(inputs, config options): the recipe's, overridden by every flag given on the command line."""
    recipe = read_recipe(a.recipe) if getattr(a, "recipe", None) else split_options({})
    inputs = dict(recipe.inputs)
    for k in INPUT_KEYS:
        if getattr(a, k, None) is not None:
            inputs[k] = getattr(a, k)
    config = dict(recipe.config)
    flat = flat_fields()
    config.update({k: v for k, v in vars(a).items() if k in flat})
    if "criterion_param" in config or "criterion_params" in config:
        given = config.pop("criterion_param", None) or config.get("criterion_params")
        config["criterion_params"] = criterion_params(given)
    return inputs, config


def cmd_prune(a: argparse.Namespace) -> int:
    inputs, options_ = _settings(a)
    where = f"--recipe {a.recipe}" if getattr(a, "recipe", None) else "options"
    if not inputs.get("model"):
        raise HwpruneError("--model is required (or set model: in the --recipe)")
    if not inputs.get("out"):
        raise HwpruneError("--out is required (or set out: in the --recipe)")
    for key in ("model", "data", "input_shape", "out", "loss", "metric"):
        if inputs.get(key) is not None and not isinstance(inputs[key], str):
            got = inputs[key]
            raise HwpruneError(f"{where}: {key.replace('_', '-')} {got!r}: expected a string, got {type(got).__name__}")
    cfg = PruneConfig.from_dict(options_, where=where)
    check_out(inputs["out"])
    resume = getattr(a, "resume", None)
    scratch = _default_checkpoints(cfg, inputs, resume)
    try:
        result = prune_spec(
            str(inputs["model"]),
            inputs.get("data"),
            inputs["batch_size"] if inputs.get("batch_size") is not None else 1,
            inputs.get("input_shape"),
            cfg,
            progress=not getattr(a, "quiet", False),
            loss=inputs.get("loss"),
            metric=inputs.get("metric"),
            seq_len=inputs.get("seq_len"),
            resume=resume,
        )
    except BaseException:
        _keep_or_drop(scratch)
        raise
    if result.report is None:  # a rank other than 0 under torchrun: rank 0 writes the outputs
        return 0
    out = result.save(inputs["out"], overwrite=True)
    if scratch is not None:  # the outputs are written: the default checkpoints have served
        shutil.rmtree(scratch, ignore_errors=True)
    _print_summary(result.report)
    print(f"wrote {out}/ (model/, plan.json, report.json, report.md, report.html)")
    return 0 if result.report.budget.met else 1


def _keep_or_drop(scratch: Path | None) -> None:
    """A run stopped (Ctrl-C, SIGTERM, an error) leaves its default checkpoints only when they save work: once
    pruning is done (`stage/`). Before that they hold nothing a resume could reuse."""
    if scratch is None or not scratch.exists() or not distributed.world().main:
        return
    if (scratch / STAGE).exists():
        print(f"fine-tuning checkpoints kept in {scratch}: continue with --resume {scratch}", file=sys.stderr)
    else:
        shutil.rmtree(scratch, ignore_errors=True)


def _default_checkpoints(cfg: PruneConfig, inputs: dict, resume: str | None) -> Path | None:
    """A run that fine-tunes checkpoints into OUT.ckpt unless told where (--checkpoint-dir); that default
    directory is removed once OUT is written. Returns it (None when the user chose the directory)."""
    ft = cfg.finetune
    default = Path(str(inputs["out"]).rstrip("/") + ".ckpt")
    if resume is not None:
        return default if Path(resume).resolve() == default.resolve() else None
    if ft.checkpoint_dir is not None or not inputs.get("data") or not (ft.epochs or ft.steps):
        return None
    if (default / RUN_JSON).exists() and distributed.world().main:  # rank 0 writes it: the others would race
        raise HwpruneError(
            f"{default} holds the checkpoints of a run that did not finish: continue it with --resume {default}, "
            "or remove it to start again"
        )
    ft.checkpoint_dir = str(default)
    return default


def _print_summary(r: Report) -> None:
    print()
    print(text_table(r))
    print()
    if r.predicted_latency_ms is not None:
        print(
            f"predicted {r.predicted_latency_ms:.3f} ms, measured {r.measured_latency_ms:.3f} ms "
            f"({100 * r.prediction_error:+.1f}%)"
        )
    print("\n".join(line.replace("**", "").replace("`", "").lstrip("- ") for line in budget_lines(r)))
    for note in r.notes:
        print(f"note: {note}")


def cmd_demo(a: argparse.Namespace) -> int:
    """MNIST-1D: train a wide 1-D CNN, prune it to 50% of its measured latency here, fine-tune, report."""
    ns = argparse.Namespace(
        model="example:mnist1d",
        data="mnist1d",
        batch_size=DEMO_BATCH,
        input_shape=None,
        out=a.out,
        recipe=None,
        budget="latency=0.5",
        finetune_epochs=DEMO_FINETUNE_EPOCHS,
    )
    print(f"hwprune demo: MNIST-1D, 1-D CNN, batch {DEMO_BATCH}, budget 50% of dense latency on this CPU")
    t0 = time.perf_counter()
    rc = cmd_prune(ns)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return rc
