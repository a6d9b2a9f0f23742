"""Every criterion on the demo task, then weight-level sparsity: the method comparison of issue 4, one command.

    python benchmarks/bench_methods.py                  # criteria table + sparsity table (bench_sparsity.py)
    python benchmarks/bench_methods.py --device cuda    # the same on a GPU (seconds per row)
    python benchmarks/bench_methods.py --part criteria --criteria l1 taylor --epochs 1

Criteria table: the demo's trained MNIST-1D CNN (hwprune.examples, width 256), 50% of the channels of every
prunable group removed (selection `ratio`, per layer) by each criterion; BatchNorm statistics re-estimated
on the same calibration batches; accuracy one-shot and after the same fine-tuning for every row
(`--epochs` epochs, AdamW + one-cycle, distillation from the dense model, the same seeded batches). Scores
use 8 calibration batches of 64 training samples. The sparsity table is bench_sparsity.py's (unstructured
50/75/90% one-shot, 90% iterative and gradual, 2:4, block4x1), run with the same `--epochs`.
Writes benchmarks/results/criteria.md and benchmarks/results/sparsity.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import save, table  # noqa: E402

CRITERIA = [
    "l1",
    "l2",
    "redundancy",
    "gradient",
    "taylor",
    "activation",
    "apoz",
    "loss-change",
    "hessian",
    "wanda",
    "random",
]


def criteria_table(a) -> str:
    from hwprune.apply.channels import apply_plan, recalibrate_bn
    from hwprune.core.data import Dataset
    from hwprune.evaluate.metrics import accuracy
    from hwprune.finetune.train import train_steps
    from hwprune.groups.analysis import analyze
    from hwprune.importance import compute_scores, normalized
    from hwprune.plan.plan import make_plan
    from hwprune.plan.select import select
    from hwprune.zoo.datasets import get_dataset
    from hwprune.zoo.examples import trained_example

    dense = trained_example("mnist1d", progress=False).eval()
    data = get_dataset("mnist1d")
    data = Dataset(
        data.name,
        *(t.to(a.device) for t in (data.x_train, data.y_train, data.x_test, data.y_test)),
        data.num_classes,
        data.description,
    )
    dense = dense.to(a.device)
    example = data.x_train[:64]
    calib = data.batches(64, 8, seed=a.seed)
    ft = data.epochs(a.epochs, 128, a.seed)
    dense_acc = accuracy(dense, data.x_test, data.y_test)
    rows, records = [], []
    for name in a.criteria:
        t0 = time.perf_counter()
        torch.manual_seed(a.seed)
        analysis = analyze(dense, example)
        scores = compute_scores(dense, analysis, name, calib, seed=a.seed)
        keep = select("ratio", normalized(scores, name), sparsity=0.5)
        widths = {g: int(k.sum()) for g, k in keep.items()}
        sizes = {g.id: g.size for g in analysis.groups}
        pruned = apply_plan(dense, example, make_plan(widths, scores, sizes, analysis.multiples))
        recalibrate_bn(pruned, calib)
        oneshot = accuracy(pruned, data.x_test, data.y_test)
        train_steps(pruned, ft, a.lr, dense, desc=f"fine-tuning ({name})", progress=False)
        acc = accuracy(pruned, data.x_test, data.y_test)
        params = sum(p.numel() for p in pruned.parameters())
        wall = time.perf_counter() - t0
        records.append(dict(criterion=name, oneshot=oneshot, accuracy=acc, params=params, wall_s=wall))
        rows.append([name, f"{100 * oneshot:.2f}", f"{100 * acc:.2f}", f"{params / 1e3:.1f} k", f"{wall:.0f}"])
        print(rows[-1], flush=True)
    text = (
        "# Criteria on MNIST-1D: 50% of every group's channels removed\n\n"
        f"Dense accuracy {100 * dense_acc:.2f}% ({data.description}), "
        f"{sum(p.numel() for p in dense.parameters()) / 1e3:.1f} k parameters. Same fine-tuning for every row: "
        f"{a.epochs} epochs, KD from the dense model, lr {a.lr}, seed {a.seed}. "
        f"torch {torch.__version__}, device {a.device}"
        + (f" ({torch.cuda.get_device_name()})" if a.device.startswith("cuda") else "")
        + f", {torch.get_num_threads()} threads. Command: `python benchmarks/bench_methods.py --device {a.device}`.\n\n"
        + table(["criterion", "one-shot acc %", f"acc after {a.epochs} ep FT %", "params", "wall s"], rows)
        + "\n"
    )
    save(a.json, {"dense_accuracy": dense_acc, "rows": records})
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "criteria", "sparsity"], default="all")
    ap.add_argument("--criteria", nargs="+", default=CRITERIA)
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs, the same for every row")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"), help="directory for the tables")
    a = ap.parse_args()
    if a.part in ("all", "criteria"):
        text = criteria_table(a)
        print("\n" + text)
        out = Path(a.results) / "criteria.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    if a.part in ("all", "sparsity"):
        import bench_sparsity

        sys.argv = [sys.argv[0], "--epochs", str(a.epochs), "--device", a.device, "--seed", str(a.seed)]
        sys.argv += ["--out", str(Path(a.results) / "sparsity.md")]
        bench_sparsity.main()


if __name__ == "__main__":
    main()
