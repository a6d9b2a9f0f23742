"""Wall-clock timing by the protocol in MEASURING.md: warm-up, >=20 runs, median and IQR."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class TimingProtocol:
    """How long to warm up and how many calls to time."""

    warmup_calls: int = 5
    warmup_s: float = 0.2
    min_calls: int = 20
    min_s: float = 0.5
    max_calls: int = 2000


#: Whole-model figures (the budget check, the report): MEASURING.md verbatim.
MODEL_PROTOCOL = TimingProtocol()
#: One latency-table entry. A table has hundreds of entries, so each is timed over >=20 calls but only 0.1 s;
#: the median of 20 calls of one layer is stable to a few percent here, and the closed loop re-measures
#: the whole pruned model with MODEL_PROTOCOL before anything is accepted.
TABLE_PROTOCOL = TimingProtocol(warmup_calls=5, warmup_s=0.05, min_calls=20, min_s=0.1)
#: Tests only: correctness of the plumbing, not speed.
FAST_PROTOCOL = TimingProtocol(warmup_calls=1, warmup_s=0.0, min_calls=3, min_s=0.0)


@dataclass(frozen=True)
class Timing:
    """Latency of one callable, seconds."""

    median: float
    q1: float
    q3: float
    n: int
    #: The timed calls in order; with time_interleaved, call i of every callable ran in the same round.
    samples: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_dict(self) -> dict:
        return {
            "median": self.median,
            "q1": self.q1,
            "q3": self.q3,
            "n": self.n,
            "iqr": self.iqr,
            "median_ms": self.median * 1e3,
            "iqr_ms": self.iqr * 1e3,
        }


def ratio(a: Timing, b: Timing) -> float:
    """a / b from one interleaved measurement: the median of the per-round ratios when both have the same
    rounds (time_interleaved), else the ratio of the medians.

    The calls of one round are adjacent in time, so the machine's drift cancels within each round. This VM
    drifts within a single measurement (one ORT model read 10 ms, then 17 ms, then 10 ms again over 40 calls).
    Eight interleaved measurements of the same pair (mobilenet_v3_small dense vs uniform 0.7, batch 8, ORT)
    gave per-round ratios 0.794-0.835 against ratios of medians 0.790-0.858 (the same 8 measurements).
    """
    if a.samples and len(a.samples) == len(b.samples):
        return float(np.median(np.asarray(a.samples) / np.asarray(b.samples)))
    return a.median / b.median


def summary(samples: Sequence[float]) -> Timing:
    """A Timing (median, quartiles, the samples in order) of timed calls, seconds."""
    a = np.asarray(samples)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return Timing(float(med), float(q1), float(q3), len(a), tuple(float(v) for v in a))


def time_interleaved(fns: Sequence[Callable[[], object]], protocol: TimingProtocol = MODEL_PROTOCOL) -> list[Timing]:
    """Time several callables A B A B ... in one process (MEASURING.md rule 6); one Timing each."""
    with torch.inference_mode():
        start = time.perf_counter()
        calls = 0
        while calls < protocol.warmup_calls or time.perf_counter() - start < protocol.warmup_s:
            for fn in fns:
                fn()
            calls += 1
        samples: list[list[float]] = [[] for _ in fns]
        start = time.perf_counter()
        while (len(samples[0]) < protocol.min_calls or time.perf_counter() - start < protocol.min_s) and len(
            samples[0]
        ) < protocol.max_calls:
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn()
                samples[i].append(time.perf_counter() - t0)
    return [summary(s) for s in samples]
