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
        help="latency budget: a fraction of the dense latency (latency=0.5) or absolute (latency=12ms)",
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
    from .report import prepare_out, text_table, write_outputs

    prepare_out(a.out)
    cfg = _config(a)
    result = prune(cfg, progress=not getattr(a, "quiet", False))
    out = write_outputs(a.out, result)
    print()
    print(text_table(result.report))
    r = result.report
    print(
        f"\npredicted {r['predicted_latency_ms']:.3f} ms, measured {r['measured_latency_ms']:.3f} ms "
        f"({100 * r['prediction_error']:+.1f}%); budget {'met' if r['budget']['met'] else 'NOT met'} "
        f"({r['budget']['used']:.0%} used)"
    )
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
