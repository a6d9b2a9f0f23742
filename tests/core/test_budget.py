"""Budgets beyond latency: parsing, exact counts, per-layer curves, and the pipeline meeting them."""

import pytest

from hwprune.core.budget import parse_budgets
from hwprune.core.errors import HwpruneError


def test_parse_units_and_fractions():
    bs = parse_budgets("latency=12ms, memory=8MB,params=1.5M, macs=0.4, energy=2mJ")
    got = {b.kind: (b.relative, b.value) for b in bs}
    assert got["latency"] == (False, pytest.approx(0.012))
    assert got["memory"] == (False, 8e6)
    assert got["params"] == (False, 1.5e6)
    assert got["macs"] == (True, 0.4)
    assert got["energy"] == (False, pytest.approx(2e-3))
    assert parse_budgets("memory=2MiB")[0].value == 2 * 1024**2
    assert parse_budgets("params=120000")[0].value == 120000  # a count >= 1 is absolute
    assert parse_budgets("0.5")[0].kind == "latency"


@pytest.mark.parametrize("text", ["memory=-1MB", "memory=1.5", "latency=2", "power=1W", "", "params=1M,params=2M"])
def test_parse_errors(text):
    with pytest.raises(HwpruneError):
        parse_budgets(text)
