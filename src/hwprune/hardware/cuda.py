"""An NVIDIA GPU through PyTorch eager: the `cuda` (float32), `cuda-fp16` and `cuda-bf16` targets.

Timing follows MEASURING.md's CUDA protocol: the device is synchronised, a pair of CUDA events is
recorded around each call, and the median/IQR of the event times is reported. Layers and models are
copied to the device and dtype (the caller's model is never moved or cast). Every setting that changes
which kernels run (TF32, cuDNN autotuning) is fixed while timing and recorded in the fingerprint, so a
table measured with TF32 on is never reused for a run with it off.

This module imports without a GPU; only constructing a target needs one.
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call
from hwprune.hardware.fingerprint import cpu_model, fingerprint_key, timing_mode
from hwprune.hardware.targets import register_target
from hwprune.hardware.timing import FAST_PROTOCOL, Timing, TimingProtocol, summary

#: One table entry: a layer runs in 10-500 us on a data-centre GPU and event timings of one kernel
#: vary by a few percent, so 25 calls (at most ~12 ms) are enough; the warm-up covers cuDNN's per-shape
#: workspace allocation and the lazy loading of a kernel's module on its first call. Kept short because
#: a ResNet-50 table has ~900 entries.
CUDA_TABLE_PROTOCOL = TimingProtocol(warmup_calls=5, warmup_s=0.005, min_calls=25, min_s=0.01)
#: Whole models: 0.3 s of warm-up calls so the GPU has left its idle clocks before the timed calls
#: (MEASURING.md: "warm up to stable clocks"), then >= 50 calls and 0.3 s.
CUDA_MODEL_PROTOCOL = TimingProtocol(warmup_calls=10, warmup_s=0.3, min_calls=50, min_s=0.3)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def time_interleaved_cuda(fns: Sequence[Callable[[], object]], protocol: TimingProtocol) -> list[Timing]:
    """Time several GPU callables A B A B ... with CUDA events around each call; one Timing each."""
    with torch.inference_mode():
        start = time.perf_counter()
        calls = 0
        while calls < protocol.warmup_calls or time.perf_counter() - start < protocol.warmup_s:
            for fn in fns:
                fn()
            torch.cuda.synchronize()
            calls += 1
        samples: list[list[float]] = [[] for _ in fns]
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start = time.perf_counter()
        while (len(samples[0]) < protocol.min_calls or time.perf_counter() - start < protocol.min_s) and len(
            samples[0]
        ) < protocol.max_calls:
            for i, fn in enumerate(fns):
                torch.cuda.synchronize()
                begin.record()
                fn()
                end.record()
                end.synchronize()
                samples[i].append(begin.elapsed_time(end) * 1e-3)  # elapsed_time is in ms
    return [summary(s) for s in samples]


@lru_cache(maxsize=1)
def _driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _to(inputs, device: torch.device, dtype: torch.dtype):
    """Inputs on the device; floating tensors in the target dtype, integer ones (token ids) as they are."""
    if isinstance(inputs, dict):
        return {k: _to(v, device, dtype) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to(v, device, dtype) for v in inputs)
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, dtype) if inputs.is_floating_point() else inputs.to(device)
    return inputs


def _model_key(model: nn.Module) -> tuple:
    return (id(model), tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))


@register_target("cuda")
class CudaTarget:
    """The current CUDA GPU, PyTorch eager, float32 (TF32 off unless `tf32=True`)."""

    description = "this machine's NVIDIA GPU, torch eager, float32 (TF32 off), CUDA-event timing"
    dtype_name = "float32"

    def __init__(
        self,
        threads: int | None = None,
        tf32: bool = False,
        table_protocol: TimingProtocol = CUDA_TABLE_PROTOCOL,
        model_protocol: TimingProtocol = CUDA_MODEL_PROTOCOL,
    ):
        if not torch.cuda.is_available():
            raise HwpruneError(f"target {self.name} needs a CUDA GPU; none is visible")
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = DTYPES[self.dtype_name]
        if self.dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise HwpruneError(
                f"target {self.name}: {torch.cuda.get_device_name(self.device)} has no bfloat16 support; "
                "use cuda-fp16 or cuda"
            )
        # TF32 only changes float32 matmuls/convolutions; it is pinned (and recorded) for every dtype anyway.
        self.tf32 = bool(tf32)
        # cuDNN autotuning (benchmark mode) may pick a different algorithm on each run for the same shape,
        # which shows up as noise in the table; the heuristic choice is deterministic.
        self.cudnn_benchmark = False
        # Host threads: CPU-side work between kernel launches (the pipeline's tracing and surgery).
        self.threads = threads or torch.get_num_threads()
        torch.set_num_threads(self.threads)
        if os.environ.get("HWPRUNE_TIMING") == "fast":
            # Tests and smoke runs only: 3 calls per figure, so the plumbing runs in seconds; the figures are noise.
            table_protocol = model_protocol = FAST_PROTOCOL
        self.table_protocol = table_protocol
        self.model_protocol = model_protocol

    @contextmanager
    def _settings(self) -> Iterator[None]:
        """Pin TF32 and cuDNN autotuning for the timed region, then restore the caller's settings."""
        saved = (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
        )
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            yield
        finally:
            (
                torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32,
                torch.backends.cudnn.benchmark,
            ) = saved

    def fingerprint(self) -> dict:
        props = torch.cuda.get_device_properties(self.device)
        return {
            "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "driver": _driver_version(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "torch": torch.__version__.split("+")[0],
            "runtime": "torch-eager cuda",
            "dtype": self.dtype_name,
            "tf32": self.tf32,
            "cudnn_benchmark": self.cudnn_benchmark,
            "timing": timing_mode(self.table_protocol, self.model_protocol),
            # Eager launches are issued by the host: at batch 1 the CPU's speed is part of the latency.
            "host_cpu": cpu_model(),
            "threads": self.threads,
        }

    def device_key(self) -> str:
        return fingerprint_key(self.fingerprint())

    def prepare(self, model: nn.Module) -> nn.Module:
        """A copy of `model` on the target's device and dtype, in eval mode (the caller's model is untouched)."""
        return copy.deepcopy(model).to(self.device, self.dtype).eval()

    def prepare_inputs(self, inputs):
        return _to(inputs, self.device, self.dtype)

    def time_layer(self, layer: nn.Module, x: torch.Tensor) -> Timing:
        mod, xd = self.prepare(layer), self.prepare_inputs(x)
        with self._settings():
            return time_interleaved_cuda([lambda: mod(xd)], self.table_protocol)[0]

    def time_models(self, models: Sequence[nn.Module], inputs, final: bool = False) -> list[Timing]:
        """Interleaved CUDA-event timing of several models on the same inputs (A B A B ...).

        Each distinct model is copied to the device once per call. `final`: the report's figure, timed 4x as long.
        """
        copies: dict[tuple, nn.Module] = {}
        xd = self.prepare_inputs(inputs)
        fns = []
        for m in models:
            key = _model_key(m)
            if key not in copies:
                copies[key] = self.prepare(m)
            fns.append(functools.partial(call, copies[key], xd))
        protocol = self.model_protocol
        if final:
            protocol = replace(protocol, min_calls=protocol.min_calls * 2, min_s=protocol.min_s * 4)
        with self._settings():
            return time_interleaved_cuda(fns, protocol)


@register_target("cuda-fp16")
class CudaFp16Target(CudaTarget):
    """The current CUDA GPU, PyTorch eager, weights and activations in float16."""

    description = "this machine's NVIDIA GPU, torch eager, float16 weights and activations, CUDA-event timing"
    dtype_name = "float16"


@register_target("cuda-bf16")
class CudaBf16Target(CudaTarget):
    """The current CUDA GPU, PyTorch eager, weights and activations in bfloat16 (compute capability >= 8.0)."""

    description = "this machine's NVIDIA GPU, torch eager, bfloat16 weights and activations, CUDA-event timing"
    dtype_name = "bfloat16"
