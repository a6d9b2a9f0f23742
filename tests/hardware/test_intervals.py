"""Confidence intervals of latency figures and the adaptive protocol (hardware.timing)."""

import numpy as np
import pytest

from hwprune.hardware.timing import (
    TimingProtocol,
    estimate,
    latency_estimate,
    ratio_estimate,
    summary,
    time_interleaved,
)


@pytest.mark.parametrize("estimator", ["median", "trimmed-mean"])
def test_interval_covers_the_true_centre_at_its_confidence(estimator):
    """i.i.d. rounds around 1.0: the 95% interval holds 1.0 in at least 88% of 150 draws."""
    rng = np.random.default_rng(0)
    hits = sum(
        (e := estimate(rng.normal(1.0, 0.05, 80), estimator, resamples=400, seed=i)).low <= 1.0 <= e.high
        for i in range(150)
    )
    assert hits >= 0.88 * 150


def test_interval_narrows_with_more_rounds_and_brackets_the_value():
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 0.05, 1000)
    short, long_ = estimate(x[:50]), estimate(x)
    assert long_.half_width < short.half_width / 2.5  # ~sqrt(20) narrower, less for the blocks
    for e in (short, long_):
        assert e.low <= e.value <= e.high and e.n == len(e.samples)


def test_drifting_rounds_get_a_wider_interval_than_shuffled_ones():
    """The block bootstrap keeps neighbouring rounds together: a slow drift widens the interval."""
    rng = np.random.default_rng(2)
    drift = 1.0 + 0.1 * np.sin(np.linspace(0, 6, 300)) + rng.normal(0, 0.01, 300)
    assert estimate(drift).half_width > 1.3 * estimate(rng.permutation(drift)).half_width


def test_ratio_interval_is_over_per_round_ratios_and_scales():
    a = summary([2.0, 2.2, 1.8, 2.1, 1.9, 2.0] * 5)
    b = summary([1.0, 1.1, 0.9, 1.05, 0.95, 1.0] * 5)
    r = ratio_estimate(a, b)
    assert r.value == pytest.approx(2.0) and r.high - r.low < 1e-9  # every round's ratio is exactly 2
    s = r.scaled(0.5)
    assert (s.value, s.low, s.high) == pytest.approx((1.0, r.low / 2, r.high / 2))
    lone = latency_estimate(a)
    assert lone.low <= 2.0 <= lone.high


def _work():
    np.linalg.svd(np.ones((24, 24)))


def test_adaptive_protocol_stops_on_tolerance_or_on_its_time_cap():
    loose = TimingProtocol(warmup_calls=1, warmup_s=0, min_calls=20, min_s=0, tolerance=0.9, max_s=5.0)
    (t,) = time_interleaved([_work], loose)
    assert t.stopped == "tolerance" and t.n == 20
    tight = TimingProtocol(warmup_calls=1, warmup_s=0, min_calls=5, min_s=0, tolerance=1e-9, max_s=0.2)
    a, b = time_interleaved([_work, _work], tight)
    assert a.stopped == b.stopped == "time cap" and a.n == b.n > 5
    fixed = TimingProtocol(warmup_calls=1, warmup_s=0, min_calls=7, min_s=0)
    assert time_interleaved([_work], fixed)[0].stopped == "calls"
