"""Build a latency-table profile from a model spec ahead of a prune, and pick a model's calibration layers.

`build_profile` measures (or completes) the table a `hwprune prune` of the same model would need;
`calibration_layers` analyses a model and returns the layers `hwprune calibrate` fits a simulated spec on.
Moving tables between machines (export, import, info) is `hwprune.hardware.table_io`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call
from hwprune.cost.curves import Profiler
from hwprune.groups.analysis import analyze
from hwprune.hardware.sim import calibration_layers_from
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.targets import get_target
from hwprune.pipeline.config import LoopConfig
from hwprune.zoo.datasets import get_dataset
from hwprune.zoo.examples import get_example
from hwprune.zoo.specs import parse_shape, resolve

#: With no --model, `hwprune profile` builds the demo's table (its model at its batch size).
DEFAULT_MODEL = "example:mnist1d"
DEFAULT_BATCH = 64


@dataclass(frozen=True)
class ProfileResult:
    model: str
    target: str
    device: str
    input_shape: tuple[int, ...]
    layers: int  # timed layers of the model
    measured: int  # entries measured by this run
    reused: int  # entries found in the cache
    device_entries: int  # entries this device has in the cache now
    seconds: float
    cache: Path
    moved_aside: Path | None  # where --rebuild moved an unreadable cache


def _default_min_keep() -> float:
    return LoopConfig().min_keep


def _architecture(spec: str, batch_size: int, input_shape: str | None, progress: bool):
    """The model and example inputs. The table depends on layer shapes only, so a built-in example is
    profiled untrained: `resolve` would train it first (minutes) for weights the table never reads."""
    if not spec.startswith("example:"):
        resolved = resolve(spec, batch_size, input_shape, progress)
        return resolved.model, resolved.example_inputs

    if batch_size < 1:
        raise HwpruneError("--batch-size must be at least 1")
    ex = get_example(spec.split(":", 1)[1])
    shape = parse_shape(input_shape) if input_shape else get_dataset(ex.data).sample_shape
    model = ex.build().eval()
    example = torch.randn((batch_size, *shape))
    try:
        with torch.no_grad():
            call(model, example)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HwpruneError(f"input of shape {tuple(example.shape)} does not fit {spec}: {msg[:200]}") from None
    return model, example


def build_profile(
    model: str | None = None,
    target: str = "cpu",
    batch_size: int | None = None,
    input_shape: str | None = None,
    threads: int | None = None,
    min_keep: float | None = None,
    cache: str | Path | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> ProfileResult:
    """Measure every table entry a prune of `model` on `target` needs that the cache lacks.

    `model` None: the demo's model at the demo's batch size. `min_keep` (default: prune's) sets the
    narrowest width profiled, so it should match the later prune's `--min-keep`.
    """
    spec = model or DEFAULT_MODEL
    batch = batch_size if batch_size is not None else (DEFAULT_BATCH if model is None else 1)
    min_keep = _default_min_keep() if min_keep is None else min_keep
    if not 0 < min_keep <= 1:
        raise HwpruneError("--min-keep must be in (0, 1]")
    tgt = get_target(target, threads=threads)
    dense, example = _architecture(spec, batch, input_shape, progress)
    analysis = analyze(dense, example, min_keep)
    with LatencyCache(cache, rebuild=rebuild) as table:
        t0 = time.perf_counter()
        profiler = Profiler(tgt, table, progress)
        profiler.build(analysis)
        seconds = time.perf_counter() - t0
        return ProfileResult(
            model=spec,
            target=target,
            device=profiler.device,
            input_shape=tuple(example.shape) if hasattr(example, "shape") else (),
            layers=len(analysis.layers),
            measured=profiler.measured,
            reused=profiler.reused,
            device_entries=table.count(profiler.device),
            seconds=seconds,
            cache=table.path,
            moved_aside=table.moved_aside,
        )


def calibration_layers(
    model: nn.Module,
    example_inputs,
    fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    max_layers: int | None = None,
) -> list[tuple[nn.Module, torch.Tensor]]:
    """Fresh copies of a model's conv/linear layers at a few fractions of their prunable widths.

    Widths scale only where the layer's input/output belongs to a prunable group (as the pruner would change
    them); duplicates are dropped. `max_layers` keeps an evenly spread subset.
    """
    return calibration_layers_from(analyze(model, example_inputs).layers, fractions, max_layers)
