"""Weight-level sparsity on the demo task (MNIST-1D): accuracy and saved size per pattern and schedule.

    python benchmarks/bench_sparsity.py                  # the full table (5-12 minutes per row on 2 cores)
    python benchmarks/bench_sparsity.py --device cuda    # the same on a GPU
    python benchmarks/bench_sparsity.py --quick          # every code path on 1,024 samples, 1 epoch
    python benchmarks/bench_sparsity.py --epochs 2 --rows u50 u90 u90-gradual

Rows (`--rows`): unstructured 50/75/90% one-shot, 90% iterative (3 rounds) and gradual (cubic ramp,
Zhu & Gupta 2017), 2:4 and block4x1 at 50%. Every row starts from the same trained dense model and gets
the same fine-tuning: `--epochs` epochs over the same seeded batches, AdamW + one-cycle at `--lr`, with
distillation from the dense model. Columns: sparsity of the masked layers and of all Conv/Linear weights
(the head stays dense), test accuracy with the masks and re-estimated BatchNorm statistics but before
fine-tuning (one-shot rows), after fine-tuning, and the saved directory's size against the dense one
(compressed masked weights). On 2 shared CPU cores a fine-tuning step of the example takes 1-3 s, so a
row of 2 epochs (250 steps) takes ~5-12 minutes; `--device cuda` runs the table in about a minute.
Writes benchmarks/results/sparsity.md (or `--out`).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import save, table  # noqa: E402

ROWS = {
    "u50": ("unstructured", 0.5, "one-shot"),
    "u75": ("unstructured", 0.75, "one-shot"),
    "u90": ("unstructured", 0.9, "one-shot"),
    "u90-iterative": ("unstructured", 0.9, "iterative"),
    "u90-gradual": ("unstructured", 0.9, "gradual"),
    "2:4": ("2:4", None, "one-shot"),
    "block4x1-50": ("block4x1", 0.5, "one-shot"),
}


def main() -> None:
    from hwprune.apply.masks import get_masks, sparsity_of
    from hwprune.core.data import Dataset
    from hwprune.evaluate.metrics import accuracy
    from hwprune.export.model import save_model
    from hwprune.export.sparse import directory_bytes
    from hwprune.finetune.weights import WeightPruneConfig, prune_weights
    from hwprune.zoo.datasets import get_dataset
    from hwprune.zoo.examples import trained_example

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs, the same for every row")
    ap.add_argument("--criterion", default="l1", help="weight-level criterion (hwprune.importance.weight_scores)")
    ap.add_argument("--scope", default="layer", choices=["layer", "global"])
    ap.add_argument("--rounds", type=int, default=3, help="iterative rounds")
    ap.add_argument("--every", type=int, default=10, help="gradual: re-mask every this many steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: the same rows in seconds on a GPU")
    ap.add_argument("--quick", action="store_true", help="1,024 training samples, 1 epoch: checks the code runs")
    ap.add_argument("--out", default=None, help="markdown table (default results/sparsity.md; --quick: a temp file)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    dense = trained_example("mnist1d", progress=False)
    data = get_dataset("mnist1d")
    if a.quick:
        data = Dataset(
            data.name,
            data.x_train[:1024],
            data.y_train[:1024],
            data.x_test[:1000],
            data.y_test[:1000],
            data.num_classes,
            data.description + " (quick: 1,024 train / 1,000 test)",
        )
        a.epochs = 1
    dense = dense.to(a.device)
    data = Dataset(
        data.name,
        *(t.to(a.device) for t in (data.x_train, data.y_train, data.x_test, data.y_test)),
        data.num_classes,
        data.description,
    )
    dense_acc = accuracy(dense, data.x_test, data.y_test)
    source = {"kind": "example", "name": "mnist1d"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-sparsity-"))
    save_model(copy.deepcopy(dense).cpu(), tmp / "dense", source)
    dense_bytes = directory_bytes(tmp / "dense")

    rows, records = [], []
    for key in a.rows:
        pattern, sparsity, schedule = ROWS[key]
        t0 = time.perf_counter()
        cfg = WeightPruneConfig(
            pattern=pattern,
            sparsity=sparsity,
            schedule=schedule,
            scope=a.scope,
            criterion=a.criterion,
            epochs=a.epochs,
            rounds=a.rounds,
            every=a.every,
            lr=a.lr,
            seed=a.seed,
        )
        oneshot = None
        if schedule == "one-shot":  # the same masks and BN re-estimation, no fine-tuning
            probe = prune_weights(copy.deepcopy(dense), data, cfg, epochs=0).model
            oneshot = accuracy(probe, data.x_test, data.y_test)
        model = copy.deepcopy(dense)
        res = prune_weights(model, data, cfg, teacher=dense)
        acc = accuracy(model, data.x_test, data.y_test)
        masks = get_masks(model)
        masked = 1 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        save_model(copy.deepcopy(model).cpu(), tmp / key, source)
        ratio = directory_bytes(tmp / key) / dense_bytes
        wall = time.perf_counter() - t0
        rec = dict(
            row=key,
            pattern=pattern,
            sparsity=cfg.sparsity,
            schedule=schedule,
            masked_sparsity=masked,
            overall_sparsity=sparsity_of(model).overall,
            accuracy_masks_only=oneshot,
            accuracy=acc,
            size_ratio=ratio,
            layers=sorted(masks),
            history=res.history,
            wall_s=wall,
        )
        records.append(rec)
        rows.append(
            [
                pattern,
                f"{cfg.sparsity:.2f}",
                schedule,
                f"{masked:.3f}",
                f"{rec['overall_sparsity']:.3f}",
                "—" if oneshot is None else f"{100 * oneshot:.2f}",
                f"{100 * acc:.2f}",
                f"{ratio:.3f}",
                f"{wall:.0f}",
            ]
        )
        print(rows[-1], flush=True)

    head = [
        "pattern",
        "target",
        "schedule",
        "masked layers",
        "all conv/linear",
        "acc masks only %",
        f"acc after {a.epochs} ep FT %",
        "size / dense",
        "wall s",
    ]
    text = (
        f"# Weight-level sparsity on MNIST-1D{' (QUICK: not a result)' if a.quick else ''}\n\n"
        f"Dense accuracy {100 * dense_acc:.2f}% ({data.description}); criterion {a.criterion}, scope {a.scope}; "
        f"fine-tuning {a.epochs} epochs with KD from the dense model, lr {a.lr}, seed {a.seed}; "
        f"iterative {a.rounds} rounds, gradual re-mask every {a.every} steps over 75% of the steps. "
        f"Dense saved size {dense_bytes / 1e6:.2f} MB. "
        f"torch {torch.__version__}, device {a.device}, {torch.get_num_threads()} threads.\n\n"
        + table(head, rows)
        + "\n"
    )
    print("\n" + text)
    a.out = a.out or str(tmp / "sparsity-quick.md" if a.quick else Path(__file__).parent / "results" / "sparsity.md")
    print(f"wrote {a.out}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    save(a.json, {"dense_accuracy": dense_acc, "rows": records})


if __name__ == "__main__":
    main()
