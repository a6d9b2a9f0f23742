"""Every torchvision classification model to `macs=0.5`: does it prune, save, reload and run?

    python benchmarks/bench_macs_sweep.py                          # the whole list, 3x224x224, batch 1
    python benchmarks/bench_macs_sweep.py --models resnet18 densenet121 --json /tmp/sweep.json

MACs are counted, not timed, so nothing here is a latency figure and the machine may be busy. Each model
(random weights) is pruned with `--budget macs=0.5 --finetune-epochs 0`, written with `PruneResult.save`,
rebuilt with `hwprune.load` from its recorded source, and run once. A row gives the share of the MAC limit
the pruned model uses (97-100% is the goal), or the one-line error that stopped it.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torchvision
from _common import save, table

from hwprune.cli.run import prune_spec
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call, primary_output
from hwprune.pipeline.config import PruneConfig
from hwprune.zoo.specs import load_saved


def _one(name: str, shape: str) -> dict:
    t0 = time.perf_counter()
    cfg = PruneConfig.from_dict({"budget": "macs=0.5", "finetune_epochs": 0})
    try:
        result = prune_spec(f"torchvision:{name}", None, 1, shape, cfg, progress=False)
        with tempfile.TemporaryDirectory() as d:
            result.save(d, overwrite=True)
            back = load_saved(f"{d}/model").eval()
            x = torch.randn((1, *map(int, shape.split("x"))))
            with torch.no_grad():
                same = torch.allclose(primary_output(call(back, x)), primary_output(call(result.model, x)), atol=1e-4)
        row = result.report.budgets[0]
        return {"model": name, "used": row.used, "met": result.report.budget.met, "reload_equal": same}
    except (HwpruneError, Exception) as e:  # noqa: BLE001  (a sweep records every failure and goes on)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        return {"model": name, "error": f"{type(e).__name__}: {first}"}
    finally:
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="default: every torchvision classification model")
    ap.add_argument("--input-shape", default="3x224x224")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    names = a.models or sorted(torchvision.models.list_models(module=torchvision.models))
    rows = []
    for n in names:
        rows.append(_one(n, a.input_shape))
        print(rows[-1], flush=True)  # a long sweep cut short still leaves its rows
    ok = [r for r in rows if "error" not in r and r["met"] and r["reload_equal"]]
    print(
        table(
            ["model", "used of the MAC limit", "met", "reload equal", "error"],
            [
                [
                    r["model"],
                    f"{100 * r['used']:.1f}%" if "used" in r else "",
                    r.get("met", ""),
                    r.get("reload_equal", ""),
                    r.get("error", ""),
                ]
                for r in rows
            ],
        )
    )
    print(f"{len(ok)} of {len(rows)} pruned to macs=0.5, met it, reloaded and ran with equal outputs")
    save(a.json, rows)


if __name__ == "__main__":
    main()
