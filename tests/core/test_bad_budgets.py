"""Malformed `--budget` text: each is one HwpruneError naming the term and the fix; any text parses or fails so."""

import math

import pytest
from helpers import assert_one_line_error, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from hwprune.core.budget import UNITS, Budget, format_amount, parse_budgets
from hwprune.core.errors import HwpruneError

BAD = [
    ("latency", "expected a fraction like 0.5"),  # a kind with no '=' reads as a bare latency value
    ("latency=fast", "expected a fraction like 0.5 or an amount like 12ms"),
    ("latency=0.5.5", "expected a fraction"),
    ("latency=12 ms s", "expected a fraction"),
    ("latency=-0.5", "must be positive, got -0.5"),
    ("memory=-8MB", "a memory budget must be positive, got -8"),
    ("latency=0", "must be above 0"),
    ("latency=0ms", "a latency budget must be positive, got 0"),
    ("memory=0.0", "must be above 0"),
    ("latency=1.01", "between 0 and 1 (0 < x <= 1)"),
    ("memory=2", "between 0 and 1 (0 < x <= 1), or give 8MB"),
    ("latency=nan", "must be a finite number"),
    ("memory=inf", "must be a finite number"),
    ("latency=-infms", "must be a finite number"),
    ("memory=1e400", "too large"),
    ("energy=1e308GJ", "unknown unit 'gj' for energy"),
    ("memory=1e308GB", "too large"),
    ("latency=12h", "unknown unit 'h' for latency; use s, ms, us"),
    ("memory=8XB", "unknown unit 'xb'"),
    ("params=3W", "unknown unit 'w' for params"),
    ("power=3W", "unknown kind 'power'"),
    ("=0.5", "missing the kind before '='"),
    ("latency=", "no value after '='"),
    ("latency=0.5,latency=0.3", "'latency' is given more than once (latency=0.5 and latency=0.3 contradict)"),
    ("latency=0.5,latency=0.5", "repeat each other"),
    ("0.5, latency=12ms", "'latency' is given more than once"),
    ("params=1M,params=2M", "more than once"),
    ("latency=0.5,", "empty term at the end; remove the extra comma"),
    (",latency=0.5", "empty term at the start"),
    ("latency=0.5,,memory=8MB", "empty term between two commas"),
    ("", "--budget is empty"),
    ("  ", "--budget is empty"),
    ("params=1.5", "whole number"),
    ("macs=0.0001K", "less than one mac"),
]


@pytest.mark.parametrize(("text", "needle"), BAD, ids=[t or "<empty>" for t, _ in BAD])
def test_malformed_budget_is_one_line_error(text, needle):
    with pytest.raises(HwpruneError) as e:
        parse_budgets(text)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg
    assert msg.startswith("--budget ")


def test_fraction_one_and_counts():
    assert parse_budgets("latency=1") == [Budget("latency", True, 1.0, "latency=1")]
    assert parse_budgets("params=1")[0].relative  # 1 is the whole dense count, not one parameter
    assert parse_budgets("params=2")[0] == Budget("params", False, 2.0, "params=2")
    assert parse_budgets("macs=1.5K")[0].value == 1500.0
    assert parse_budgets(" latency = .5 ")[0].value == 0.5
    assert parse_budgets("latency=5.ms")[0].value == pytest.approx(5e-3)
    assert parse_budgets("memory=+1e3KB")[0].value == 1e6


def test_not_text():
    with pytest.raises(HwpruneError, match="must be text"):
        parse_budgets(0.5)


# Text built from the grammar's own pieces reaches far more branches than arbitrary unicode does.
TOKENS = [*UNITS, "=", ",", " ", "0", "1", "5", ".", "-", "+", "e", "e-", "12", "0.5", "ms", "us", "MB", "KiB"]
TOKENS += ["mJ", "K", "M", "G", "nan", "inf", "x", "latency=", "memory=", "params="]
texts = st.one_of(st.text(max_size=30), st.lists(st.sampled_from(TOKENS), max_size=10).map("".join))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(texts)
def test_any_text_parses_and_reparses_or_is_hwprune_error(text):
    try:
        budgets = parse_budgets(text)
    except HwpruneError as e:
        assert "\n" not in str(e)
        return
    assert budgets and len({b.kind for b in budgets}) == len(budgets)
    for b in budgets:
        assert math.isfinite(b.value) and b.value > 0 and (not b.relative or b.value <= 1)
        assert parse_budgets(b.text) == [b]
        assert parse_budgets(b.to_text()) == [Budget(b.kind, b.relative, b.value, b.to_text())]
    assert parse_budgets(",".join(b.text for b in budgets)) == budgets


finite = st.floats(min_value=1e-12, max_value=1e15, allow_nan=False)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sampled_from(list(UNITS)), st.booleans(), finite)
def test_to_text_round_trips_exactly(kind, relative, value):
    if relative:
        value = min(value, 1.0)
    elif kind in ("params", "macs"):
        value = float(max(1, round(value)))
    b = Budget(kind, relative, value, "")
    (back,) = parse_budgets(b.to_text())
    assert (back.kind, back.relative, back.value) == (kind, relative, value)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.one_of(
        st.tuples(st.just("latency"), st.floats(1e-5, 1e3), st.just(5e-7)),
        st.tuples(st.just("memory"), st.floats(1e3, 1e12), st.just(500.0)),
        st.tuples(st.just("energy"), st.floats(1e-9, 1e3), st.just(0.0)),
    )
)
def test_formatted_amounts_round_trip(case):
    kind, value, abs_tol = case
    text = format_amount(kind, value)
    (back,) = parse_budgets(f"{kind}={text}")
    assert not back.relative
    assert back.value == pytest.approx(value, rel=5e-4, abs=abs_tol), text


@pytest.mark.parametrize(
    ("budget", "needle"),
    [("latency=0.5,", "empty term at the end"), ("latency=nan", "finite"), ("latency=0.5,latency=0.3", "contradict")],
)
def test_cli_reports_a_malformed_budget_on_one_line(capsys, tmp_path, tiny_file, budget, needle):
    out = tmp_path / "out"
    argv = ["prune", "--model", f"{tiny_file}:tiny_cnn", "--budget", budget, "--quiet", "--out", out]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, needle)
    assert not out.exists()
