"""The `hwprune` command: a thin layer over the library. Errors print one line and exit 2."""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
import threading
import traceback

from hwprune import __version__
from hwprune.cli.evaluate import cmd_evaluate, evaluate_args
from hwprune.cli.explain import cmd_explain, explain_args
from hwprune.cli.export import cmd_export, export_args
from hwprune.cli.outputs import resolve_checked
from hwprune.cli.profile import DEFAULT_BATCH, DEFAULT_MODEL, build_profile, calibration_layers
from hwprune.cli.prune import SHARED, add_config_options, add_model_args, cmd_demo, cmd_prune, prune_args
from hwprune.cli.serve import cmd_serve, serve_args
from hwprune.cli.sweep import cmd_sweep, sweep_args
from hwprune.core.errors import HwpruneError
from hwprune.evaluate.validate import validate
from hwprune.hardware.sim import calibrate, load_spec, save_spec
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.table_io import describe_fingerprint, export_profile, import_profile, profile_info
from hwprune.hardware.targets import get_target, list_targets
from hwprune.hardware.timing import latency_estimate
from hwprune.importance.criteria import list_criteria
from hwprune.pipeline.granularity import GRANULARITIES, SCHEDULES, language_model_methods
from hwprune.plan.select import list_selections
from hwprune.report.text import set_command
from hwprune.zoo.specs import SPEC_HELP


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that the same clean-up as Ctrl-C runs (temporary outputs
    removed by `atomic_directory`); exit code 128 + 15 as a shell reports a signal."""


class Parser(argparse.ArgumentParser):
    """argparse's own usage errors as one line too (`hwprune: error: ...`, exit 2), like every other one."""

    def error(self, message: str):
        command = self.prog.removeprefix("hwprune").strip()
        self.exit(2, f"hwprune: error: {command + ': ' if command else ''}{message} (see {self.prog} --help)\n")


def _need_model(a: argparse.Namespace) -> None:
    if not a.model:
        raise HwpruneError(f"--model is required for `hwprune {a.command}`")
    if getattr(a, "threads", None) is not None and a.threads < 1:
        raise HwpruneError(f"--threads {a.threads}: give at least 1 (or leave it out for the physical cores)")


def cmd_bench(a: argparse.Namespace) -> int:
    _need_model(a)

    resolved = resolve_checked(a.model, 1 if a.batch_size is None else a.batch_size, a.input_shape)
    target = get_target(a.target, threads=a.threads)
    t = target.time_models([resolved.model], resolved.example_inputs)[0]
    fp = target.fingerprint()
    print(f"{a.model}  batch {a.batch_size or 1}  input {tuple(resolved.example_inputs.shape)}")
    e = latency_estimate(t)
    print(
        f"latency {t.median * 1e3:.3f} ms median, 95% CI {e.low * 1e3:.3f}..{e.high * 1e3:.3f} ms "
        f"(±{e.half_width:.1%}, {t.n} calls, stopped on {t.stopped}), IQR {t.q1 * 1e3:.3f}..{t.q3 * 1e3:.3f} ms"
    )
    timing = fp.get("timing", "standard")
    print(f"{fp['cpu']}, {fp['threads']} threads, torch {fp['torch']}, {fp['dtype']}, {timing} timing")
    return 0


def cmd_targets(a: argparse.Namespace) -> int:

    rows = list_targets()
    width = max(len(n) for n, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_profile(a: argparse.Namespace) -> int:

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

    r = export_profile(a.file, a.cache, a.device)
    print(f"wrote {r.path}: {r.entries} entries of {len(r.devices)} device(s) ({', '.join(r.devices)})")
    return 0


def cmd_profile_import(a: argparse.Namespace) -> int:

    r = import_profile(a.file, a.cache)
    c = r.counts
    print(
        f"imported {a.file} into {r.cache}: {c.added} entries added, {c.replaced} replaced by newer ones, "
        f"{c.kept} kept (the cache's copy was as new or newer); {len(r.devices)} device(s), {c.devices_added} new"
    )
    return 0


def cmd_profile_info(a: argparse.Namespace) -> int:

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

    sections = [
        ("criteria (--criterion)", [(n, f"{d} [{', '.join(g)}]") for n, d, g in list_criteria()]),
        ("language-model criteria (--criterion, with the granularity in brackets)", language_model_methods()),
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

    resolved = resolve_checked(a.model, 1 if a.batch_size is None else a.batch_size, a.input_shape)
    target = get_target(a.target, threads=a.threads)
    report = validate(resolved.model, resolved.example_inputs, target, cache=LatencyCache(a.cache), progress=True)
    print(report.to_table())
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    """Fit a simulated spec to latencies measured on a measured target; write the fitted spec."""
    _need_model(a)

    spec = load_spec(a.spec)
    resolved = resolve_checked(a.model, 1 if a.batch_size is None else a.batch_size, a.input_shape)
    measured = get_target(a.target, threads=a.threads)
    layers = calibration_layers(resolved.model, resolved.example_inputs, max_layers=a.max_layers)
    fitted, report = calibrate(spec, measured, layers)
    print(report.summary())
    if a.out:
        print(f"wrote {save_spec(fitted, a.out)} (use it with --target {a.out})")
    return 0


def build_parser() -> argparse.ArgumentParser:

    parser = Parser(
        prog="hwprune",
        description="Prune a PyTorch model to fit a target (this CPU, ONNX Runtime, a CUDA GPU or a simulated device) "
        "and a budget (latency, memory, energy, params, MACs) measured or counted on that target.",
    )
    parser.add_argument("--version", action="version", version=f"hwprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback too")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train, prune to 50%% latency and fine-tune a 1-D CNN on MNIST-1D (no downloads)")
    p.add_argument("--out", default="hwprune-demo", help="output directory (default: ./hwprune-demo)")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("prune", help="prune a model to a budget on a target, or by any method (see `methods`)")
    prune_args(p)
    p.set_defaults(fn=cmd_prune)
    p = sub.add_parser(
        "sweep", help="one run per latency budget x allocator, sharing the latency table; a Pareto page (index.html)"
    )
    sweep_args(p)
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser(
        "explain",
        help="why pruning does (not) speed a model up on a target: per-layer shares, bounds, steps, advice",
    )
    explain_args(p)
    p.set_defaults(fn=cmd_explain)
    p = sub.add_parser(
        "evaluate", help="record the metric of a saved (or your own fine-tuned) model in an output's report"
    )
    evaluate_args(p)
    p.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser(
        "export", help="write a saved model as a deployable file (ONNX fp32/fp16/int8, or .pt2), parity checked"
    )
    export_args(p)
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser(
        "serve", help="on a device: time what `--target remote:HOST:PORT/ort` sends (token: HWPRUNE_TOKEN)"
    )
    serve_args(p)
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("bench", help="measure a model's latency on a target (default: this CPU)")
    add_model_args(p)
    add_config_options(p, only=SHARED)
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("targets", help="list the targets latency can be measured on (--target NAME)")
    p.set_defaults(fn=cmd_targets)
    p = sub.add_parser("methods", help="list every criterion, granularity, selection rule and schedule")
    p.set_defaults(fn=cmd_methods)
    p = sub.add_parser("validate", help="predicted vs measured latency, per layer and whole model, on a target")
    add_model_args(p)
    add_config_options(p, only=SHARED)
    p.add_argument("--cache", default=None, help="latency table file (default: ~/.cache/hwprune/latency.sqlite)")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser(
        "calibrate", help="fit a simulated spec's efficiency, bandwidth and overhead to a measured target"
    )
    p.add_argument("--spec", required=True, help="catalog name (e.g. rpi5, see `hwprune targets`) or a spec .yaml")
    add_model_args(p)
    add_config_options(p, only=SHARED)
    p.add_argument("--max-layers", type=int, default=40, help="layers (at several widths) to measure (default 40)")
    p.add_argument("--out", default=None, help="write the fitted spec here (a .yaml usable as --target)")
    p.set_defaults(fn=cmd_calibrate)
    _add_profile_parsers(sub)
    for p in sub.choices.values():  # `hwprune prune --debug ...` as well as `hwprune --debug prune ...`
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


#: Seconds after a SIGTERM at which it is raised again while the run goes on. Python runs a signal handler
#: in whatever frame is current, and an exception raised there can be swallowed (a finalizer's "exception
#: ignored", a library's broad except): a run then went on after a job scheduler's stop, about 1 run in 4 of
#: tests/cli/test_bad_input.py's signal test. Raised again from a timer, it lands somewhere else.
TERMINATE_REPEAT_S = 1.0


def _terminate(signum, frame):
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGALRM, _terminate_again)
        signal.setitimer(signal.ITIMER_REAL, TERMINATE_REPEAT_S)
    raise Terminated()


def _terminate_again(signum, frame):
    """The timer after a SIGTERM: while the Terminated unwinds (clean-up in except, finally and __exit__ blocks
    sees it in `sys.exc_info`) wait on; when it was swallowed, raise it again."""
    if isinstance(sys.exc_info()[1], Terminated):
        signal.setitimer(signal.ITIMER_REAL, TERMINATE_REPEAT_S)
        return
    _terminate(signum, frame)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        if e.code == 2:  # a usage error, already printed in one line by Parser.error
            return 2
        raise  # --help, --version: argparse's own exit, as a script expects
    set_command(list(sys.argv[1:] if argv is None else argv))  # the report's "reproduce" line
    main_thread = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    previous_alarm = signal.getsignal(signal.SIGALRM) if main_thread else None
    try:
        return args.fn(args)
    except HwpruneError as e:
        if args.debug:
            traceback.print_exc()
        print(f"hwprune: error: {_first_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if args.debug:
            traceback.print_exc()
        print("hwprune: interrupted", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:  # a bug or an unforeseen input: still one line, the traceback on request
        if args.debug:
            traceback.print_exc()
        what = f"{type(e).__name__}: {_first_line(e)}" if _first_line(e) else type(e).__name__
        print(f"hwprune: error: {what}{'' if args.debug else ' (run with --debug for the traceback)'}", file=sys.stderr)
        return 2
    finally:
        set_command(None)
        if main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)  # a SIGTERM's repeat (_terminate) is not needed any more
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGALRM, previous_alarm)


if __name__ == "__main__":
    sys.exit(main())
