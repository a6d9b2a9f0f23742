"""The `hwprune` command: a thin layer over the library. Errors print one line and exit 2."""

from __future__ import annotations

import argparse
import sys
import time

from .errors import HwpruneError

DEMO_BATCH = 64
DEMO_FINETUNE_EPOCHS = 4


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .models import SPEC_HELP

    p.add_argument("--model", required=True, help=f"model spec: {SPEC_HELP}")
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
        "--budget",
        default="latency=0.5",
        help="what the pruned model must fit, comma-separated, all enforced: latency=0.5 (fraction of dense) or "
        "latency=12ms; memory=8MB (weights + peak activation); energy=2mJ (simulated targets); params=1.5M; "
        "macs=300M; memory/energy/params/macs also take a fraction of dense (memory=0.5)",
    )
    p.add_argument(
        "--criterion",
        default=None,
        help="channel importance: l1, l2, taylor, random (default: taylor with --data, else l1)",
    )
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
    p.add_argument("--data", default=None, help="data set for calibration, fine-tuning and accuracy: mnist1d, digits")
    p.add_argument(
        "--finetune-epochs", type=int, default=0, help="epochs of fine-tuning with distillation (needs --data)"
    )
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    p.add_argument("--min-keep", type=float, default=0.1, help="never keep less than this fraction of a group")
    p.add_argument("--max-iters", type=int, default=8, help="closed-loop iterations (allocate, measure, correct)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars or loop log, only the final table")
    p.add_argument("--out", required=True, help="output directory (model/, plan.json, report.json, report.md)")


def _config(a: argparse.Namespace):
    """PruneConfig from the parsed flags: every flag whose name is a config field (one place to add a flag)."""
    from dataclasses import fields

    from .prune import PruneConfig

    names = {f.name for f in fields(PruneConfig)}
    return PruneConfig(**{k: v for k, v in vars(a).items() if k in names})


def cmd_prune(a: argparse.Namespace) -> int:
    from .prune import prune
    from .report import budget_lines, prepare_out, text_table, write_outputs

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
    print(f"wrote {out}/ (model/, plan.json, report.json, report.md)")
    return 0 if r["budget"]["met"] else 1


def cmd_demo(a: argparse.Namespace) -> int:
    """MNIST-1D: train a wide 1-D CNN, prune it to 50% of its measured latency here, fine-tune, report."""
    ns = argparse.Namespace(
        model="example:mnist1d",
        budget="latency=0.5",
        batch_size=DEMO_BATCH,
        input_shape=None,
        criterion="taylor",
        allocator="hw",
        value="auto",
        data="mnist1d",
        finetune_epochs=DEMO_FINETUNE_EPOCHS,
        lr=1e-3,
        threads=None,
        target="cpu",
        seed=0,
        min_keep=0.1,
        max_iters=8,
        quiet=False,
        out=a.out,
    )
    print(f"hwprune demo: MNIST-1D, 1-D CNN, batch {DEMO_BATCH}, budget 50% of dense latency on this CPU")
    t0 = time.perf_counter()
    rc = cmd_prune(ns)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return rc


def cmd_bench(a: argparse.Namespace) -> int:
    from .hardware.targets import get_target
    from .models import resolve

    resolved = resolve(a.model, a.batch_size, a.input_shape)
    target = get_target(a.target, threads=a.threads)
    t = target.time_models([resolved.model], resolved.example_inputs)[0]
    fp = target.fingerprint()
    print(f"{a.model}  batch {a.batch_size}  input {tuple(resolved.example_inputs.shape)}")
    print(f"latency {t.median * 1e3:.3f} ms median, IQR {t.q1 * 1e3:.3f}..{t.q3 * 1e3:.3f} ms, n={t.n}")
    print(f"{fp['cpu']}, {fp['threads']} threads, torch {fp['torch']}, {fp['dtype']}")
    return 0


def cmd_targets(a: argparse.Namespace) -> int:
    from .hardware.targets import list_targets

    rows = list_targets()
    width = max(len(n) for n, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_profile(a: argparse.Namespace) -> int:
    from .profile import build_profile

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
    from .profile import export_profile

    r = export_profile(a.file, a.cache, a.device)
    print(f"wrote {r.path}: {r.entries} entries of {len(r.devices)} device(s) ({', '.join(r.devices)})")
    return 0


def cmd_profile_import(a: argparse.Namespace) -> int:
    from .profile import import_profile

    r = import_profile(a.file, a.cache)
    c = r.counts
    print(
        f"imported {a.file} into {r.cache}: {c.added} entries added, {c.replaced} replaced by newer ones, "
        f"{c.kept} kept (the cache's copy was as new or newer); {len(r.devices)} device(s), {c.devices_added} new"
    )
    return 0


def cmd_profile_info(a: argparse.Namespace) -> int:
    import datetime

    from .hardware.targets import get_target
    from .profile import describe_fingerprint, profile_info

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
    from .models import SPEC_HELP
    from .profile import DEFAULT_BATCH, DEFAULT_MODEL

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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="hwprune", description="Prune a PyTorch model to a latency budget measured on this hardware."
    )
    parser.add_argument("--version", action="version", version=f"hwprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train, prune to 50%% latency and fine-tune a 1-D CNN on MNIST-1D (no downloads)")
    p.add_argument("--out", default="hwprune-demo", help="output directory (default: ./hwprune-demo)")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("prune", help="prune a model to a latency budget")
    _prune_args(p)
    p.set_defaults(fn=cmd_prune)
    p = sub.add_parser("bench", help="measure a model's latency on this CPU")
    _add_model_args(p)
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("targets", help="list the targets latency can be measured on (--target NAME)")
    p.set_defaults(fn=cmd_targets)
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
