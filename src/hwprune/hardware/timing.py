"""Wall-clock timing by the protocol in MEASURING.md: warm-up, >=20 runs, median and IQR."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch


@dataclass(frozen=True)
class TimingProtocol:
    """How long to warm up and how many calls to time.

    With a `tolerance`, timing goes on after the minimum until the 95% confidence interval of every
    figure (the median of one callable; with several, each one's per-round ratio to the first) is within
    `tolerance` x the figure on either side, or until `max_s` seconds of timed rounds.
    """

    warmup_calls: int = 5
    warmup_s: float = 0.2
    min_calls: int = 20
    min_s: float = 0.5
    max_calls: int = 2000
    tolerance: float | None = None
    max_s: float = 0.0


#: Whole-model figures (the budget check, the report): MEASURING.md, then adaptively until the interval's
#: half-width is 2% of the figure or 4 s have passed. On the demo pair (8 ms dense, 4 ms pruned: 12 ms a
#: round) 4 s is ~330 rounds.
MODEL_PROTOCOL = TimingProtocol(tolerance=0.02, max_s=4.0)
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
    #: Why timing stopped: "calls" (the protocol's minimum), "tolerance" (the interval was narrow enough),
    #: "time cap" (max_s reached first) or "max calls".
    stopped: str = "calls"

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


#: Every interval hwprune reports is a 95% confidence interval.
CONFIDENCE = 0.95
#: 20% trimmed mean: drops the slowest and fastest fifth of the rounds (a preempted round, a lucky one).
TRIM = 0.2


def _trimmed_mean(a: np.ndarray) -> np.ndarray:
    k = int(TRIM * a.shape[-1])
    s = np.sort(a, axis=-1)
    return s[..., k : a.shape[-1] - k].mean(axis=-1)


#: Estimators of one figure from its rounds, compared on benchmarks/bench_noise.py (README, "Measuring").
ESTIMATORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "median": lambda a: np.median(a, axis=-1),
    "trimmed-mean": _trimmed_mean,
    "minimum": lambda a: np.min(a, axis=-1),
}
DEFAULT_ESTIMATOR = "median"


@dataclass(frozen=True)
class Estimate:
    """A figure with its confidence interval: `value` from all rounds, [low, high] at `confidence`."""

    value: float
    low: float
    high: float
    n: int
    estimator: str = DEFAULT_ESTIMATOR
    confidence: float = CONFIDENCE
    #: The rounds it came from (so that two measurements of one plan can be pooled).
    samples: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def half_width(self) -> float:
        """Half the interval's width, relative to the figure (0.02: +-2%)."""
        return (self.high - self.low) / 2 / abs(self.value) if self.value else float("inf")

    def scaled(self, factor: float) -> Estimate:
        return replace(
            self,
            value=self.value * factor,
            low=self.low * factor,
            high=self.high * factor,
            samples=tuple(v * factor for v in self.samples),
        )

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "estimator": self.estimator,
            "confidence": self.confidence,
        }


def estimate(
    samples: Sequence[float],
    estimator: str = DEFAULT_ESTIMATOR,
    confidence: float = CONFIDENCE,
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """`estimator` over the rounds, with a moving-block bootstrap percentile interval.

    Rounds are not independent here: the machine drifts over seconds, so neighbouring rounds are alike.
    Resampling blocks of ~n^(1/3) consecutive rounds keeps that correlation in every resample (Kunsch 1989,
    "The jackknife and the bootstrap for general stationary observations"); resampling single rounds
    would give an interval too narrow for a drifting machine.
    """
    a = np.asarray(samples, dtype=np.float64)
    stat = ESTIMATORS[estimator]
    n = len(a)
    value = float(stat(a))
    kept = tuple(float(v) for v in a)
    if n < 3:
        return Estimate(value, value, value, n, estimator, confidence, kept)
    block = max(1, round(n ** (1 / 3)))
    k = -(-n // block)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(resamples, k))
    idx = (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]
    boot = stat(a[idx])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return Estimate(value, float(min(low, value)), float(max(high, value)), n, estimator, confidence, kept)


def round_ratios(a: Timing, b: Timing) -> np.ndarray:
    """a / b round by round (both from one time_interleaved call)."""
    if not a.samples or len(a.samples) != len(b.samples):
        raise ValueError("per-round ratios need two Timings from the same interleaved measurement")
    return np.asarray(a.samples) / np.asarray(b.samples)


def ratio_estimate(a: Timing, b: Timing, estimator: str = DEFAULT_ESTIMATOR) -> Estimate:
    """a / b with its 95% interval over the per-round ratios; the ratio of medians when not interleaved."""
    if a.samples and len(a.samples) == len(b.samples):
        return estimate(round_ratios(a, b), estimator)
    r = a.median / b.median
    return Estimate(r, r, r, min(a.n, b.n), "ratio of medians")


def latency_estimate(t: Timing, estimator: str = DEFAULT_ESTIMATOR) -> Estimate:
    """One callable's latency with its 95% interval over its calls."""
    return estimate(t.samples, estimator) if t.samples else Estimate(t.median, t.median, t.median, t.n)


def ratio(a: Timing, b: Timing) -> float:
    """a / b from one interleaved measurement: the median of the per-round ratios when both have the same
    rounds (time_interleaved), else the ratio of the medians.

    The calls of one round are adjacent in time, so the machine's drift cancels within each round. This VM
    drifts within a single measurement (one ORT model read 10 ms, then 17 ms, then 10 ms again over 40 calls).
    Eight interleaved measurements of the same pair (mobilenet_v3_small dense vs uniform 0.7, batch 8, ORT)
    gave per-round ratios 0.794-0.835 against ratios of medians 0.790-0.858 (the same 8 measurements).
    """
    if a.samples and len(a.samples) == len(b.samples):
        return float(np.median(round_ratios(a, b)))
    return a.median / b.median


def summary(samples: Sequence[float], stopped: str = "calls") -> Timing:
    """A Timing (median, quartiles, the samples in order) of timed calls, seconds."""
    a = np.asarray(samples)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return Timing(float(med), float(q1), float(q3), len(a), tuple(float(v) for v in a), stopped)


#: With a tolerance, the interval is checked every CHECK_EVERY rounds (a 200-resample bootstrap, ~1 ms).
CHECK_EVERY = 10


def _narrow_enough(samples: list[list[float]], tolerance: float) -> bool:
    """Every figure's 95% interval within +-tolerance: each callable's per-round ratio to the first, or the
    median of a lone callable."""
    if len(samples) == 1:
        return estimate(samples[0], resamples=200).half_width <= tolerance
    first = np.asarray(samples[0])
    return all(estimate(np.asarray(s) / first, resamples=200).half_width <= tolerance for s in samples[1:])


def _stop_reason(p: TimingProtocol, samples: list[list[float]], elapsed: float) -> str | None:
    n = len(samples[0])
    if n >= p.max_calls:
        return "max calls"
    if n < p.min_calls or elapsed < p.min_s:
        return None
    if p.tolerance is None:
        return "calls"
    if elapsed >= p.max_s:
        return "time cap"
    if n % CHECK_EVERY == 0 and _narrow_enough(samples, p.tolerance):
        return "tolerance"
    return None


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
        while (stopped := _stop_reason(protocol, samples, time.perf_counter() - start)) is None:
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn()
                samples[i].append(time.perf_counter() - t0)
    return [summary(s, stopped) for s in samples]
