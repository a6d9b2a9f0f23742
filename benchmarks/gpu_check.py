"""One-shot check of the CUDA targets on a GPU machine: tests, then predicted vs measured latency.

    python benchmarks/gpu_check.py                       # tests + resnet18/resnet50 x cuda, fp16, bf16 x batch 1, 32
    python benchmarks/gpu_check.py --out gpu_check.md    # also write the tables as markdown

1. Runs tests/test_targets_measured.py (the GPU tests are skipped without a GPU, run here).
2. For each case, prunes the model to `latency=0.5` with the pipeline on the target and validates the
   cost model (see bench_prediction.py for what each row means); prints the fingerprint of each target.

Meant to finish within 8 minutes on one H100 with 16 CPU cores: cases run in order of importance and a
case is skipped (and listed) once the next one would probably overrun `--time-budget-s`.
Without a GPU it exits at once with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--targets", nargs="+", default=["cuda", "cuda-fp16", "cuda-bf16"])
    ap.add_argument("--time-budget-s", type=float, default=420.0, help="start no case after this (default 7 min)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--out", default=None, help="write the tables (markdown) here")
    ap.add_argument("--json", default=None, help="write every case here")
    a = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); nothing to check.")
        return 2
    os.environ.pop("HWPRUNE_TIMING", None)  # real protocols: this is a measurement run
    t_start = time.perf_counter()
    lines = [f"# gpu_check on {torch.cuda.get_device_name()}", ""]

    if not a.skip_tests:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_targets_measured.py"],
            cwd=HERE.parent.parent,
            capture_output=True,
            text=True,
        )
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        print(tail, flush=True)
        lines += [f"pytest tests/test_targets_measured.py: exit {proc.returncode}", "", "```", tail, "```", ""]

    from _common import table
    from bench_prediction import run_case, table_rows

    from hwprune.hardware.targets import get_target

    fingerprints = {}
    for t in a.targets:
        try:
            fingerprints[t] = get_target(t).fingerprint()
        except Exception as e:
            fingerprints[t] = {"error": str(e)}
        print(f"{t}: {json.dumps(fingerprints[t])}", flush=True)

    rows, cases, skipped, failures = [], [], [], []
    last_s: dict[tuple[str, int], float] = {}
    order = [(m, b, t) for m in a.models for b in a.batches for t in a.targets]
    for name, b, t in order:
        elapsed = time.perf_counter() - t_start
        guess = last_s.get((name, b), 60.0)
        if elapsed + guess > a.time_budget_s:
            skipped.append(f"{name} b{b} {t}")
            continue
        t0 = time.perf_counter()
        try:
            case = run_case(name, b, t)
        except Exception as e:
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            failures.append([t, name, b, msg])
            print(f"{t} {name} b{b}: FAILED {msg}", flush=True)
            continue
        last_s[(name, b)] = time.perf_counter() - t0
        cases.append(case)
        for row in table_rows(case):
            rows.append(row)
            print(" | ".join(map(str, row)), flush=True)
        w = case["layer_worst"]
        print(
            f"  pruned/dense {case['latency_ratio']:.3f} (met: {case['budget_met']}); layers median |error| "
            f"{100 * case['layer_median_abs_error']:.1f}%, worst {100 * w['error']:+.1f}% ({w['name']}); "
            f"{last_s[(name, b)]:.0f} s",
            flush=True,
        )

    headers = ["target", "model", "batch", "variant", "remainder fit on", "layer sum ms", "predicted ms", "measured ms"]
    lines += [table(headers + ["error"], rows), ""]
    lines += [
        table(
            ["target", "model", "batch", "pruned/dense", "met", "layer median abs error", "s"],
            [
                [
                    c["target"],
                    c["model"],
                    c["batch"],
                    f"{c['latency_ratio']:.3f}",
                    c["budget_met"],
                    f"{100 * c['layer_median_abs_error']:.1f}%",
                    f"{c['wall_s']:.0f}",
                ]
                for c in cases
            ],
        ),
        "",
    ]
    if failures:
        lines += ["Failed:", "", table(["target", "model", "batch", "error"], failures), ""]
    if skipped:
        lines += [f"Skipped (time budget {a.time_budget_s:.0f} s): {', '.join(skipped)}", ""]
    lines += ["Fingerprints:", "", "```", *(f"{t}: {json.dumps(fp)}" for t, fp in fingerprints.items()), "```"]
    lines += ["", f"total {time.perf_counter() - t_start:.0f} s"]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if a.out:
        Path(a.out).write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps(cases, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
