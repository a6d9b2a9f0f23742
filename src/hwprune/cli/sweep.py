"""`hwprune sweep --model SPEC --budgets 0.3,0.5,0.7,0.9 --allocator hw,uniform --out DIR`."""

from __future__ import annotations

import argparse
import shlex
import sys

from hwprune.cli.run import prune_spec
from hwprune.core.errors import HwpruneError
from hwprune.pipeline.config import PruneConfig
from hwprune.pipeline.sweep import check_sweep_out, parse_budgets, sweep
from hwprune.plan.allocate import get_allocator
from hwprune.report.sweep import Sweep, SweepPoint
from hwprune.report.text import current_command
from hwprune.zoo.specs import SPEC_HELP
from hwprune.zoo.userdata import DATA_HELP


def sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=f"model spec: {SPEC_HELP}")
    p.add_argument("--data", default=None, help=f"data for calibration, fine-tuning and the metric: {DATA_HELP}")
    p.add_argument("--batch-size", type=int, default=1, help="batch size latency is measured at (default 1)")
    p.add_argument("--input-shape", default=None, help="one sample's shape, e.g. 3x224x224")
    p.add_argument(
        "--budgets", default="0.3,0.5,0.7,0.9", help="latency budgets, fractions of dense (default 0.3,0.5,0.7,0.9)"
    )
    p.add_argument(
        "--allocator", default="hw,uniform", help="allocators to compare, comma-separated (default hw,uniform)"
    )
    p.add_argument("--target", default="cpu", help="where latency is measured (default cpu)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs per point (default 0)")
    p.add_argument("--seed", type=int, default=None, help="random seed of every run")
    p.add_argument("--out", required=True, help="directory: one sub-directory per point, index.html, index.md")
    p.add_argument("--quiet", action="store_true", help="no progress bars (one line per stage)")


def cmd_sweep(a: argparse.Namespace) -> int:
    budgets = parse_budgets(a.budgets)
    allocators = [x.strip() for x in a.allocator.split(",") if x.strip()]
    if not allocators:
        raise HwpruneError("--allocator: name at least one, e.g. hw,uniform")
    for name in allocators:
        get_allocator(name)  # an unknown name: refused before the first run
    check_sweep_out(a.out)

    def config(budget: float, allocator: str) -> PruneConfig:
        values = {
            "budget": f"latency={budget:g}",
            "allocator": allocator,
            "target": a.target,
            "finetune_epochs": a.finetune_epochs,
        }
        if a.seed is not None:
            values["seed"] = a.seed
        return PruneConfig.from_dict(values, where="sweep options")

    config(budgets[0], allocators[0])  # bad options: refused before any run

    def run_point(budget: float, allocator: str):
        result = prune_spec(
            a.model, a.data, a.batch_size, a.input_shape, config(budget, allocator), progress=not a.quiet
        )
        result.report.command = shlex.join(
            [
                "hwprune",
                "prune",
                "--model",
                a.model,
                *(["--data", a.data] if a.data else []),
                "--batch-size",
                str(a.batch_size),
                "--budget",
                f"latency={budget:g}",
                "--allocator",
                allocator,
                "--target",
                a.target,
                "--finetune-epochs",
                str(a.finetune_epochs),
                "--out",
                f"{a.out}/{allocator}-{budget:g}",
            ]
        )
        return result

    s = Sweep(model=a.model, target=a.target, data=a.data, command=current_command())
    s = sweep(run_point, budgets, allocators, a.out, s, log=lambda m: print(m, file=sys.stderr, flush=True))
    _print(s)
    print(f"wrote {a.out}/index.html, index.md, sweep.json and one directory per point")
    return 0 if all(p.status.startswith("met") for p in s.points) else 1  # as prune: 1 when a budget is not met


def _print(s: Sweep) -> None:
    from hwprune.report.sweep import table_rows  # noqa: PLC0415

    head, rows = table_rows(s)
    keep = [0, 1, 2, 3, 6, 7]
    rows = [[r[i] if len(r[i]) <= 70 else r[i][:67] + "..." for i in keep] for r in rows]
    head = [head[i] for i in keep]
    w = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(f"{str(c):<{w[i]}}" for i, c in enumerate(r)))


__all__ = ["SweepPoint", "cmd_sweep", "sweep_args"]
