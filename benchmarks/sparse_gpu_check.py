"""Dense vs 2:4 semi-structured sparse Linear layers on an NVIDIA GPU (compute capability 8.0+).

    python benchmarks/sparse_gpu_check.py                       # float16, 2,048 tokens, 30 interleaved runs
    python benchmarks/sparse_gpu_check.py --dtype bfloat16 --runs 50 --backend cutlass
    python benchmarks/sparse_gpu_check.py --out benchmarks/results/sparse_gpu.md

Each case masks every Linear to 2:4 by magnitude (`hwprune.sparsity.compute_masks`), keeps that masked
model dense as the baseline, and converts a copy with `hwprune.sparsity.to_semi_structured` (PyTorch's
cuSPARSELt or CUTLASS kernels). Correctness: the sparse output against the masked dense output (max
error relative to the output's max magnitude). Timing (MEASURING.md, CUDA protocol): CUDA events around
each call, warm-up of at least 10 calls and 0.5 s per model, then dense and sparse interleaved
(alternating which goes first) for `--runs` rounds; median and IQR per model, speedup = ratio of medians.
Without a suitable GPU it says so and exits with status 1.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import table  # noqa: E402


class ViTMLPStack(nn.Module):
    """The MLP halves of ViT-B/16's 12 encoder blocks: x + fc2(gelu(fc1(layernorm(x)))), 768 -> 3072 -> 768.

    Residuals and LayerNorm keep activations in fp16 range through 24 random Linears, as in the model.
    """

    def __init__(self, depth: int = 12, dim: int = 768, hidden: int = 3072):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.fc1 = nn.ModuleList(nn.Linear(dim, hidden) for _ in range(depth))
        self.fc2 = nn.ModuleList(nn.Linear(hidden, dim) for _ in range(depth))

    def forward(self, x):
        for norm, fc1, fc2 in zip(self.norms, self.fc1, self.fc2, strict=True):
            x = x + fc2(nn.functional.gelu(fc1(norm(x))))
        return x


def cases(tokens: int) -> list[tuple[str, nn.Module, int, int]]:
    """(name, module, tokens, input features); LLaMA-7B's projection shapes and ViT-B/16 at batch 32."""
    return [
        ("Linear 4096->4096", nn.Linear(4096, 4096), tokens, 4096),
        ("Linear 4096->11008 (LLaMA-7B up)", nn.Linear(4096, 11008), tokens, 4096),
        ("Linear 11008->4096 (LLaMA-7B down)", nn.Linear(11008, 4096), tokens, 11008),
        ("ViT-B/16 MLP x12, 32 x 197 tokens", ViTMLPStack(), 32 * 197, 768),
    ]


def time_interleaved(models: list[nn.Module], x: torch.Tensor, runs: int) -> list[list[float]]:
    """Milliseconds per call for each model, timed with CUDA events, interleaved A B, B A, ..."""
    with torch.no_grad():
        for m in models:  # warm-up: clocks, cuBLAS/cuSPARSELt algorithm choice, allocator
            t0, n = time.perf_counter(), 0
            while n < 10 or time.perf_counter() - t0 < 0.5:
                m(x)
                n += 1
            torch.cuda.synchronize()
        times: list[list[float]] = [[] for _ in models]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for r in range(runs):
            order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
            for i in order:
                torch.cuda.synchronize()
                start.record()
                models[i](x)
                end.record()
                end.synchronize()
                times[i].append(start.elapsed_time(end))
    return times


def median_iqr(ts: list[float]) -> tuple[float, float]:
    q1, med, q3 = statistics.quantiles(ts, n=4, method="inclusive")
    return med, q3 - q1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=2048, help="rows of the input to the single Linear cases")
    ap.add_argument("--runs", type=int, default=30, help="interleaved timing rounds (at least 20)")
    ap.add_argument("--backend", default="auto", choices=["auto", "cutlass"], help="auto: PyTorch's default")
    ap.add_argument("--tolerance", type=float, default=1e-2, help="max error / max |output| that passes")
    ap.add_argument("--out", default=None, help="also write the table as markdown here")
    a = ap.parse_args()
    if a.runs < 20:
        ap.error("--runs must be at least 20 (median and IQR need enough samples)")

    if not torch.cuda.is_available():
        print("sparse_gpu_check: no CUDA GPU here; 2:4 sparse kernels need an NVIDIA GPU of compute capability 8.0+")
        return 1
    major, minor = torch.cuda.get_device_capability()
    name = torch.cuda.get_device_name()
    if major < 8:
        print(f"sparse_gpu_check: {name} is compute capability {major}.{minor}; 2:4 kernels need 8.0+ (Ampere+)")
        return 1

    from hwprune.apply.masks import apply_masks, check_nm, compute_masks, remove_masks
    from hwprune.apply.semistructured import to_semi_structured
    from hwprune.core.errors import HwpruneError

    if a.backend == "cutlass":
        torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS = True
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    rows, failures = [], 0
    for label, module, tokens, features in cases(a.tokens):
        dense = module.to("cuda", dtype).eval()
        linears = [n for n, m in dense.named_modules() if isinstance(m, nn.Linear)]
        scores = {n: dense.get_submodule(n).weight.detach().abs().float() for n in linears}
        apply_masks(dense, compute_masks(dense, scores, "2:4", layers=linears), "2:4")
        sparse = copy.deepcopy(dense)
        remove_masks(dense)  # the baseline runs without hooks; its pruned weights stay zero
        assert all(check_nm(dense.get_submodule(n).weight, 2, 4) for n in linears)
        try:
            converted = to_semi_structured(sparse)
        except HwpruneError as e:
            rows.append([label, tokens, "-", "-", "-", "-", f"not converted: {e}"])
            failures += 1
            continue
        backend = type(sparse.get_submodule(converted[0]).weight).__name__.removeprefix("SparseSemiStructuredTensor")
        x = torch.randn(tokens, features, device="cuda", dtype=dtype)
        with torch.no_grad():
            ref, out = dense(x).float(), sparse(x).float()
        err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
        ok = err <= a.tolerance
        failures += not ok
        td, ts = time_interleaved([dense, sparse], x, a.runs)
        (md, iqd), (ms, iqs) = median_iqr(td), median_iqr(ts)
        rows.append(
            [
                label,
                tokens,
                f"{md:.3f} ± {iqd / 2:.3f}",
                f"{ms:.3f} ± {iqs / 2:.3f}",
                f"{md / ms:.2f}x",
                f"{len(converted)}/{len(linears)} ({backend})",
                f"{err:.1e} {'ok' if ok else 'FAIL'}",
            ]
        )
        print(rows[-1], flush=True)
        del dense, sparse, x, ref, out
        torch.cuda.empty_cache()

    cslt = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else "n/a"
    head = ["case", "tokens", "dense ms (median ± IQR/2)", "2:4 ms", "speedup", "layers sparse", "rel. error"]
    text = (
        f"# 2:4 semi-structured sparsity vs dense, {a.dtype}\n\n"
        f"{name} (compute capability {major}.{minor}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuSPARSELt {cslt}, backend {a.backend}; CUDA events, {a.runs} interleaved runs per model after warm-up; "
        f"2:4 masks by magnitude; error = max |sparse - masked dense| / max |masked dense|.\n\n"
        + table(head, rows)
        + "\n"
    )
    print("\n" + text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    if failures:
        print(f"sparse_gpu_check: {failures} case(s) failed the correctness check or could not be converted")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
