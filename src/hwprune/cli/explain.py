"""`hwprune explain --model SPEC [--target T] [--batch-size N] [--budget 0.5] [--plan plan.json] [--json]`."""

from __future__ import annotations

import argparse
import json

from hwprune.cli.outputs import resolve_checked
from hwprune.core.errors import HwpruneError
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.targets import get_target
from hwprune.pipeline.explain import explain, text
from hwprune.plan.plan import Plan
from hwprune.zoo.specs import SPEC_HELP


def explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=f"model spec: {SPEC_HELP}")
    p.add_argument("--target", default="cpu", help="where latency is measured (default cpu; see `hwprune targets`)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size latency is measured at (default 1)")
    p.add_argument("--input-shape", default=None, help="one sample's shape, e.g. 3x224x224")
    p.add_argument("--budget", type=float, default=None, help="a latency budget as a fraction of dense (e.g. 0.5)")
    p.add_argument("--plan", default=None, help="a plan.json of a run of this model: its realised/ideal speedup")
    p.add_argument("--min-keep", type=float, default=0.1, help="narrowest width measured (default 0.1)")
    p.add_argument("--cache", default=None, help="latency table file (default: ~/.cache/hwprune/latency.sqlite)")
    p.add_argument("--json", action="store_true", help="the same content as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars (one line per stage)")


def cmd_explain(a: argparse.Namespace) -> int:
    if a.budget is not None and not 0 < a.budget <= 1:
        raise HwpruneError(f"--budget {a.budget}: give the latency budget as a fraction of dense, e.g. 0.5")
    if not 0 < a.min_keep < 1:
        raise HwpruneError(f"--min-keep {a.min_keep}: give a fraction between 0 and 1, e.g. 0.1")
    plan = Plan.load(a.plan) if a.plan else None
    resolved = resolve_checked(a.model, a.batch_size, a.input_shape, progress=not a.quiet)
    target = get_target(a.target, threads=a.threads)
    ex = explain(
        resolved.model,
        resolved.example_inputs,
        target,
        model_name=a.model,
        budget=a.budget,
        plan=plan,
        plan_path=a.plan,
        cache=LatencyCache(a.cache),
        min_keep=a.min_keep,
        progress=not a.quiet and not a.json,
    )
    print(json.dumps(ex.to_dict(), indent=1) if a.json else text(ex))
    return 0
