"""`hwprune evaluate DIR --data SPEC [--model SPEC]`: the metric of the saved pruned model (or of one the user
fine-tuned themselves) on the data's validation batches, recorded in DIR's report.json, report.md and
report.html."""

from __future__ import annotations

import argparse
from pathlib import Path

from hwprune.core.data import as_data
from hwprune.core.errors import HwpruneError
from hwprune.evaluate.metrics import evaluate
from hwprune.report.files import add_evaluation
from hwprune.report.schema import Evaluation
from hwprune.zoo.specs import SPEC_HELP, resolve
from hwprune.zoo.userdata import DATA_HELP, resolve_callable, resolve_data


def evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="an output directory of `hwprune prune` (its report gets the figure)")
    p.add_argument("--data", required=True, help=f"data whose validation batches are scored: {DATA_HELP}")
    p.add_argument(
        "--model",
        default=None,
        help=f"the model to score instead of DIR/model, e.g. one you fine-tuned and saved: {SPEC_HELP}",
    )
    p.add_argument(
        "--metric", default=None, help="path/to/file.py:fn, fn(outputs, targets) -> batch mean (default top-1)"
    )
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="the model was built by your own file.py:function: import the copy saved with it (runs that file)",
    )


class _Counted:
    """The validation batches, counted as they are scored."""

    def __init__(self, batches):
        self.batches, self.n, self.samples = batches, 0, 0

    def __iter__(self):
        for x, y in self.batches:
            self.n += 1
            self.samples += len(y) if y is not None and hasattr(y, "__len__") else 0
            yield x, y


def cmd_evaluate(a: argparse.Namespace) -> int:
    out = Path(a.dir)
    if not (out / "report.json").exists():
        raise HwpruneError(f"{out}: no report.json there; give an output directory of `hwprune prune`")
    spec = a.model or str(out / "model")
    metric = resolve_callable(a.metric, "--metric")
    resolved = resolve(spec, 1, None, progress=False, trust_code=a.trust_code)
    data = as_data(resolve_data(a.data, resolved.example_inputs, resolved.tokenizer, resolved.model))
    batches = _Counted(data.validation())
    value = evaluate(resolved.model, batches, metric)
    if value is None:
        raise HwpruneError(f"--data {a.data}: its validation batches carry no targets, so there is nothing to score")
    name = a.model or "the saved pruned model"
    r = add_evaluation(
        out,
        Evaluation(model=name, data=a.data, metric=float(value), batches=batches.n, samples=batches.samples or None),
    )
    print(
        f"{name} on {a.data}: {100 * value:.2f}% ({batches.samples or batches.n} "
        f"{'samples' if batches.samples else 'batches'}); recorded in {out}/report.json, report.md, report.html"
    )
    if r.pruned.accuracy is not None:
        print(
            f"(the run's own figure: dense {100 * (r.dense.accuracy or 0):.2f}%, pruned {100 * r.pruned.accuracy:.2f}%)"
        )
    return 0
