"""The `hwprune` command: a thin layer over the library. Errors print one line and exit 2."""

from __future__ import annotations

import argparse
import sys
import time

from hwprune.core.errors import HwpruneError

DEMO_BATCH = 64
DEMO_FINETUNE_EPOCHS = 4


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from hwprune.zoo.specs import SPEC_HELP

    p.add_argument("--model", default=None, help=f"model spec: {SPEC_HELP}")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the input the latency is measured at")
    p.add_argument(
        "--input-shape",
        default=None,
        help="one sample's shape, e.g. 3x224x224 (default: 3x224x224 for torchvision, the data's shape for examples)",
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    p.add_argument("--target", default="cpu", help="where latency is measured (default: cpu, this machine's CPU)")


def _prune_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument(
        "--recipe",
        default=None,
        help="YAML file setting any of these options (keys as the flag names: criterion, granularity, selection, "
        "schedule, budget, finetune-epochs, data, ...); flags given on the command line win",
    )
    p.add_argument(
        "--budget",
        default=None,
        help="what the pruned model must fit, comma-separated, all enforced: latency=0.5 (fraction of dense) or "
        "latency=12ms; memory=8MB (weights + peak activation); energy=2mJ (simulated targets); params=1.5M; "
        "macs=300M; memory/energy/params/macs also take a fraction of dense (memory=0.5). Default latency=0.5 "
        "with --selection budget; with other selections a budget is only checked and reported",
    )
    p.add_argument(
        "--criterion",
        default=None,
        help="importance criterion: l1, l2, redundancy, gradient, taylor, activation, apoz, loss-change, hessian, "
        "wanda, random (default: taylor with --data, else l1); `hwprune methods` describes each",
    )
    p.add_argument(
        "--criterion-param",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="a criterion parameter, e.g. lambda=0.5 for redundancy (repeatable)",
    )
    p.add_argument(
        "--granularity",
        default="channel",
        help="what is removed: channel, head, block (physically removed); unstructured, N:M (e.g. 2:4), "
        "block-sparse (e.g. block4x1, block8x8) (weights masked, saved compressed)",
    )
    p.add_argument(
        "--selection",
        default="budget",
        help="which units go: budget (hardware allocator, the default), ratio (--sparsity), threshold "
        "(--threshold), mean-threshold, hierarchical (blocks, then channels, then weights)",
    )
    p.add_argument(
        "--sparsity", type=float, default=None, help="fraction of units (of weights at weight level) to remove"
    )
    p.add_argument("--scope", default="layer", help="ratio per layer (layer) or over the whole model (global)")
    p.add_argument("--threshold", type=float, default=None, help="score threshold (threshold, threshold-decay)")
    p.add_argument(
        "--schedule",
        default="one-shot",
        help="one-shot, iterative (--rounds of prune -> fine-tune), gradual (cubic ramp, Zhu & Gupta 2017), "
        "threshold-decay (threshold x --decay per round)",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds of iterative / gradual / threshold-decay (default 3)")
    p.add_argument("--decay", type=float, default=0.5, help="threshold-decay: factor per round (default 0.5)")
    p.add_argument("--cache", default=None, help="latency table file (default: ~/.cache/hwprune/latency.sqlite)")
    p.add_argument(
        "--allocator",
        default="hw",
        help="hw (measured-latency knapsack), uniform (one ratio), global (one importance threshold)",
    )
    p.add_argument(
        "--value",
        default="auto",
        help="what --allocator hw maximises: sensitivity (measured loss rise "
        "per group width; default with --data) or scores (sum of kept scores)",
    )
    p.add_argument(
        "--trust",
        type=float,
        default=None,
        help="--allocator hw keeps each group's width within [T, 1/T] x the uniform plan's at the same budget "
        "(default 0.75 when fine-tuning, else 0: anywhere; 1 is the uniform plan)",
    )
    p.add_argument("--data", default=None, help="data set for calibration, fine-tuning and accuracy: mnist1d, digits")
    p.add_argument(
        "--finetune-epochs", type=int, default=0, help="epochs of fine-tuning with distillation (needs --data)"
    )
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    p.add_argument("--min-keep", type=float, default=0.1, help="never keep less than this fraction of a group")
    p.add_argument("--max-iters", type=int, default=8, help="closed-loop iterations (allocate, measure, correct)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars or loop log, only the final table")
    p.add_argument("--out", default=None, help="output directory (model/, plan.json, report.json, report.md)")


def _criterion_params(items: list[str] | dict | None) -> dict | None:
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


def _config(a: argparse.Namespace):
    """PruneConfig from the parsed flags: every flag whose name is a config field (one place to add a flag)."""
    from dataclasses import fields

    from hwprune.pipeline.prune import PruneConfig

    names = {f.name for f in fields(PruneConfig)}
    values = {k: v for k, v in vars(a).items() if k in names}
    values["criterion_params"] = _criterion_params(getattr(a, "criterion_param", None))
    return PruneConfig(**values)


def apply_recipe(a: argparse.Namespace, path: str) -> argparse.Namespace:
    """Fill every option the command line left at its default from the recipe YAML at `path`."""
    import yaml

    try:
        recipe = yaml.safe_load(open(path))
    except OSError as e:
        raise HwpruneError(f"--recipe {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise HwpruneError(f"--recipe {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise HwpruneError(f"--recipe {path}: expected a mapping of options (criterion: taylor, ...)")
    parser = build_parser()
    defaults = vars(parser.parse_args(["prune"]))
    out = vars(a).copy()
    for key, value in recipe.items():
        dest = str(key).replace("-", "_")
        if dest == "finetune" and isinstance(value, dict):  # finetune: {epochs: 4, lr: 0.001}
            for k, v in value.items():
                out_key = {"epochs": "finetune_epochs"}.get(k, k)
                if out_key not in defaults:
                    raise HwpruneError(f"--recipe {path}: unknown fine-tuning option '{k}' (use epochs, lr)")
                if out[out_key] == defaults[out_key]:
                    out[out_key] = v
            continue
        if dest == "criterion_params":
            dest = "criterion_param"
            value = [f"{k}={v}" for k, v in (value or {}).items()]
        if dest == "budget" and isinstance(value, dict):  # budget: {latency: 0.5, memory: 8MB}
            value = ",".join(f"{k}={v}" for k, v in value.items())
        if dest not in defaults or dest in ("command", "fn", "recipe"):
            known = sorted(k.replace("_", "-") for k in defaults if k not in ("command", "fn", "recipe"))
            raise HwpruneError(f"--recipe {path}: unknown option '{key}'; options are: {', '.join(known)}")
        if out[dest] == defaults[dest]:
            out[dest] = str(value) if dest in ("budget", "granularity", "model") else value
    return argparse.Namespace(**out)


def _need_model(a: argparse.Namespace) -> None:
    if not a.model:
        raise HwpruneError(f"--model is required for `hwprune {a.command}`")


def cmd_prune(a: argparse.Namespace) -> int:
    from hwprune.pipeline.prune import prune
    from hwprune.report.files import budget_lines, prepare_out, text_table, write_outputs

    if getattr(a, "recipe", None):
        a = apply_recipe(a, a.recipe)
    if not a.model:
        raise HwpruneError("--model is required (or set model: in the --recipe)")
    if not a.out:
        raise HwpruneError("--out is required (or set out: in the --recipe)")
    prepare_out(a.out)
    cfg = _config(a)
    result = prune(cfg, progress=not getattr(a, "quiet", False))
    out = write_outputs(a.out, result)
    print()
    print(text_table(result.report))
    r = result.report
    print()
    if r["predicted_latency_ms"] is not None:
        print(
            f"predicted {r['predicted_latency_ms']:.3f} ms, measured {r['measured_latency_ms']:.3f} ms "
            f"({100 * r['prediction_error']:+.1f}%)"
        )
    print("\n".join(line.replace("**", "").replace("`", "").lstrip("- ") for line in budget_lines(r)))
    for note in r.get("notes", []):
        print(f"note: {note}")
    print(f"wrote {out}/ (model/, plan.json, report.json, report.md)")
    return 0 if r["budget"]["met"] else 1


def cmd_demo(a: argparse.Namespace) -> int:
    """MNIST-1D: train a wide 1-D CNN, prune it to 50% of its measured latency here, fine-tune, report."""
    ns = build_parser().parse_args(
        ["prune", "--model", "example:mnist1d", "--budget", "latency=0.5", "--batch-size", str(DEMO_BATCH)]
        + ["--criterion", "taylor", "--data", "mnist1d", "--finetune-epochs", str(DEMO_FINETUNE_EPOCHS)]
        + ["--out", a.out]
    )
    print(f"hwprune demo: MNIST-1D, 1-D CNN, batch {DEMO_BATCH}, budget 50% of dense latency on this CPU")
    t0 = time.perf_counter()
    rc = cmd_prune(ns)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return rc


def cmd_bench(a: argparse.Namespace) -> int:
    _need_model(a)
    from hwprune.hardware.targets import get_target
    from hwprune.zoo.specs import resolve

    resolved = resolve(a.model, a.batch_size, a.input_shape)
    target = get_target(a.target, threads=a.threads)
    t = target.time_models([resolved.model], resolved.example_inputs)[0]
    fp = target.fingerprint()
    print(f"{a.model}  batch {a.batch_size}  input {tuple(resolved.example_inputs.shape)}")
    print(f"latency {t.median * 1e3:.3f} ms median, IQR {t.q1 * 1e3:.3f}..{t.q3 * 1e3:.3f} ms, n={t.n}")
    print(f"{fp['cpu']}, {fp['threads']} threads, torch {fp['torch']}, {fp['dtype']}")
    return 0


def cmd_targets(a: argparse.Namespace) -> int:
    from hwprune.hardware.targets import list_targets

    rows = list_targets()
    width = max(len(n) for n, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_profile(a: argparse.Namespace) -> int:
    from hwprune.cli.profile import build_profile

    r = build_profile(
        model=a.model,
        target=a.target,
        batch_size=a.batch_size,
        input_shape=a.input_shape,
        threads=a.threads,
        min_keep=a.min_keep,
        cache=a.cache,
        rebuild=a.rebuild,
        progress=not a.quiet,
    )
    if r.moved_aside:
        print(f"moved the unreadable cache aside to {r.moved_aside}; started a fresh one")
    print(f"{r.model}  input {r.input_shape}  target {r.target}  device {r.device}  ({r.layers} timed layers)")
    print(
        f"latency table: {r.measured} entries measured, {r.reused} reused from the cache, {r.seconds:.1f} s; "
        f"{r.device_entries} entries for this device"
    )
    print(f"cache: {r.cache}")
    return 0


def cmd_profile_export(a: argparse.Namespace) -> int:
    from hwprune.hardware.table_io import export_profile

    r = export_profile(a.file, a.cache, a.device)
    print(f"wrote {r.path}: {r.entries} entries of {len(r.devices)} device(s) ({', '.join(r.devices)})")
    return 0


def cmd_profile_import(a: argparse.Namespace) -> int:
    from hwprune.hardware.table_io import import_profile

    r = import_profile(a.file, a.cache)
    c = r.counts
    print(
        f"imported {a.file} into {r.cache}: {c.added} entries added, {c.replaced} replaced by newer ones, "
        f"{c.kept} kept (the cache's copy was as new or newer); {len(r.devices)} device(s), {c.devices_added} new"
    )
    return 0


def cmd_profile_info(a: argparse.Namespace) -> int:
    import datetime

    from hwprune.hardware.table_io import describe_fingerprint, profile_info
    from hwprune.hardware.targets import get_target

    path, devices = profile_info(a.cache)
    here = get_target(a.target, threads=a.threads).device_key()
    print(f"latency cache {path}: {sum(d.entries for d in devices)} entries, {len(devices)} device(s)")
    for d in devices:
        when = datetime.datetime.fromtimestamp(d.last).strftime("%Y-%m-%d %H:%M") if d.last else "never"
        mark = f"  <- --target {a.target} here" if d.device == here else ""
        print(f"  {d.device}  {d.entries:>6} entries  {d.layers:>4} layers  last {when}{mark}")
        print(f"      {describe_fingerprint(d.fingerprint)}")
    return 0


def _cache_arg(p: argparse.ArgumentParser, default) -> None:
    p.add_argument(
        "--cache",
        default=default,
        metavar="FILE",
        help="latency table file (default: $HWPRUNE_CACHE_DIR/latency.sqlite, else ~/.cache/hwprune/latency.sqlite)",
    )


def _profile_build_args(p: argparse.ArgumentParser, suppress: bool) -> None:
    """`profile`'s build flags. On the `build` action their defaults are SUPPRESS, so flags given before the
    action (`profile --target X build`) are not overwritten by that parser's defaults."""
    from hwprune.cli.profile import DEFAULT_BATCH, DEFAULT_MODEL
    from hwprune.zoo.specs import SPEC_HELP

    def d(value):
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--model", default=d(None), help=f"model spec: {SPEC_HELP} (default: {DEFAULT_MODEL}, the demo's)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=d(None),
        help=f"batch size the table is measured at (default: {DEFAULT_BATCH} for the default model, else 1)",
    )
    p.add_argument("--input-shape", default=d(None), help="one sample's shape, e.g. 3x224x224 (as for prune)")
    p.add_argument("--threads", type=int, default=d(None), help="intra-op threads (default: physical cores)")
    p.add_argument("--target", default=d("cpu"), help="where latency is measured (default: cpu; see `hwprune targets`)")
    p.add_argument(
        "--min-keep",
        type=float,
        default=d(None),
        help="narrowest width profiled, a fraction of each group; match the later prune's --min-keep (default 0.1)",
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        default=d(False),
        help="if the cache file is corrupt or of another schema, move it aside (<name>.corrupt-<time>) and start "
        "a fresh one; a healthy file is kept",
    )
    p.add_argument("--quiet", action="store_true", default=d(False), help="no progress bar")
    _cache_arg(p, d(None))


def _add_profile_parsers(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="build, export, import or list measured latency tables",
        description="Measure the latency table a prune needs ahead of time, and share tables between identical "
        "machines. With no action, builds (same as `profile build`): `hwprune profile --target cpu` profiles the "
        "demo's model on this CPU.",
    )
    _profile_build_args(p, suppress=False)
    p.set_defaults(fn=cmd_profile)
    actions = p.add_subparsers(dest="profile_action")
    b = actions.add_parser("build", help="measure (or complete) a model's table on a target (the default action)")
    _profile_build_args(b, suppress=True)
    b.set_defaults(fn=cmd_profile)
    e = actions.add_parser("export", help="write tables to a JSON file (.gz: gzipped) for another machine")
    e.add_argument("file", metavar="FILE", help="output file; written atomically, gzipped if it ends in .gz")
    e.add_argument(
        "--device",
        action="append",
        default=None,
        metavar="KEY",
        help="export only this device (key or unique prefix, see `profile info`); repeatable (default: all)",
    )
    _cache_arg(e, argparse.SUPPRESS)
    e.set_defaults(fn=cmd_profile_export)
    i = actions.add_parser(
        "import",
        help="merge a file written by `profile export` into the cache",
        description="Merge an exported table into the cache, all or nothing. On a conflict the entry measured "
        "later wins; on a tie the cache's own entry is kept. Imported entries are used only where the device "
        "fingerprint matches.",
    )
    i.add_argument("file", metavar="FILE", help="a file written by `hwprune profile export` (JSON or gzipped JSON)")
    _cache_arg(i, argparse.SUPPRESS)
    i.set_defaults(fn=cmd_profile_import)
    n = actions.add_parser("info", help="list the devices in the cache (fingerprint, entries, layers)")
    n.add_argument("--target", default=argparse.SUPPRESS, help="mark the device this target is here (default: cpu)")
    n.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="its threads (default: physical cores)")
    _cache_arg(n, argparse.SUPPRESS)
    n.set_defaults(fn=cmd_profile_info)


def cmd_methods(a: argparse.Namespace) -> int:
    """Every criterion, granularity, selection rule and schedule, one line each."""
    from hwprune.importance.criteria import list_criteria
    from hwprune.pipeline.methods import GRANULARITIES, SCHEDULES
    from hwprune.plan.select import list_selections

    sections = [
        ("criteria (--criterion)", [(n, f"{d} [{', '.join(g)}]") for n, d, g in list_criteria()]),
        ("granularities (--granularity)", list(GRANULARITIES.items())),
        ("selection rules (--selection)", list_selections()),
        ("schedules (--schedule)", list(SCHEDULES.items())),
    ]
    for title, rows in sections:
        print(f"{title}:")
        width = max(len(n) for n, _ in rows)
        for name, desc in rows:
            print(f"  {name:<{width}}  {desc}")
        print()
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    """Predicted vs measured latency per layer and for the whole model on a target."""
    _need_model(a)
    from hwprune.evaluate.validate import validate
    from hwprune.hardware.table import LatencyCache
    from hwprune.hardware.targets import get_target
    from hwprune.zoo.specs import resolve

    resolved = resolve(a.model, a.batch_size, a.input_shape)
    target = get_target(a.target, threads=a.threads)
    report = validate(resolved.model, resolved.example_inputs, target, cache=LatencyCache(a.cache), progress=True)
    print(report.to_table())
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    """Fit a simulated spec to latencies measured on a measured target; write the fitted spec."""
    _need_model(a)
    from hwprune.cli.profile import calibration_layers
    from hwprune.hardware.sim import calibrate, load_spec, save_spec
    from hwprune.hardware.targets import get_target
    from hwprune.zoo.specs import resolve

    spec = load_spec(a.spec)
    resolved = resolve(a.model, a.batch_size, a.input_shape)
    measured = get_target(a.target, threads=a.threads)
    layers = calibration_layers(resolved.model, resolved.example_inputs, max_layers=a.max_layers)
    fitted, report = calibrate(spec, measured, layers)
    print(report.summary())
    if a.out:
        print(f"wrote {save_spec(fitted, a.out)} (use it with --target {a.out})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hwprune import __version__

    parser = argparse.ArgumentParser(
        prog="hwprune",
        description="Prune a PyTorch model to fit a target (this CPU, ONNX Runtime, a CUDA GPU or a simulated device) "
        "and a budget (latency, memory, energy, params, MACs) measured or counted on that target.",
    )
    parser.add_argument("--version", action="version", version=f"hwprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train, prune to 50%% latency and fine-tune a 1-D CNN on MNIST-1D (no downloads)")
    p.add_argument("--out", default="hwprune-demo", help="output directory (default: ./hwprune-demo)")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("prune", help="prune a model to a budget on a target, or by any method (see `methods`)")
    _prune_args(p)
    p.set_defaults(fn=cmd_prune)
    p = sub.add_parser("bench", help="measure a model's latency on a target (default: this CPU)")
    _add_model_args(p)
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("targets", help="list the targets latency can be measured on (--target NAME)")
    p.set_defaults(fn=cmd_targets)
    p = sub.add_parser("methods", help="list every criterion, granularity, selection rule and schedule")
    p.set_defaults(fn=cmd_methods)
    p = sub.add_parser("validate", help="predicted vs measured latency, per layer and whole model, on a target")
    _add_model_args(p)
    p.add_argument("--cache", default=None, help="latency table file (default: ~/.cache/hwprune/latency.sqlite)")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser(
        "calibrate", help="fit a simulated spec's efficiency, bandwidth and overhead to a measured target"
    )
    p.add_argument("--spec", required=True, help="catalog name (e.g. rpi5, see `hwprune targets`) or a spec .yaml")
    _add_model_args(p)
    p.add_argument("--max-layers", type=int, default=40, help="layers (at several widths) to measure (default 40)")
    p.add_argument("--out", default=None, help="write the fitted spec here (a .yaml usable as --target)")
    p.set_defaults(fn=cmd_calibrate)
    _add_profile_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except HwpruneError as e:
        print(f"hwprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
