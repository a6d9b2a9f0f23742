import numpy as np
import pytest
import torch
from tiny_models import tiny_cnn

from hwprune.core.errors import HwpruneError
from hwprune.cost.curves import Profiler
from hwprune.groups.analysis import analyze
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.targets import get_target
from hwprune.hardware.timing import Timing


def test_cache_hits_on_second_build_and_misses_on_new_fingerprint(tmp_path):
    model, x = tiny_cnn()
    a = analyze(model, x)
    # A deterministic target first, so every count is exact (a timed one may re-measure an outlier).
    cache = LatencyCache(tmp_path / "t.sqlite")
    p1 = Profiler(get_target("analytic-test"), cache, progress=False)
    curves1 = p1.build(a)
    n = cache.count()
    assert p1.measured == n > 0 and cache.hits == 0

    cache2 = LatencyCache(tmp_path / "t.sqlite")
    p2 = Profiler(get_target("analytic-test"), cache2, progress=False)
    curves2 = p2.build(a)
    assert p2.measured == 0 and cache2.hits == n
    for k in curves1:
        np.testing.assert_array_equal(curves1[k].grid, curves2[k].grid)

    cache3 = LatencyCache(tmp_path / "t.sqlite")
    p3 = Profiler(get_target("cpu", threads=2), cache3, progress=False)  # another fingerprint
    p3.build(a)
    # Refinement points depend on the measured values, so the count may differ; none is reused.
    assert p3.device != p1.device and p3.measured > 0 and cache3.hits == 0
    assert cache3.count(p1.device) == n and 0 < cache3.count(p3.device) <= p3.measured
    torch.set_num_threads(1)


def test_corrupt_cache_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HwpruneError, match="delete the file"):
        LatencyCache(bad)


def test_fast_and_standard_timing_never_share_a_table(tmp_path, monkeypatch):
    """HWPRUNE_TIMING=fast (3 calls a figure) is in every fingerprint, so its noise never passes for a table."""
    model, x = tiny_cnn()
    a = analyze(model, x)

    def standard_target():
        monkeypatch.delenv("HWPRUNE_TIMING")
        t = get_target("cpu", threads=1)
        monkeypatch.setenv("HWPRUNE_TIMING", "fast")
        # The standard protocol times an entry for >= 0.15 s; the table key is under test, not the timing.
        t.time_layer = lambda layer, inp: Timing(1e-3, 1e-3, 1e-3, 20)
        return t

    fast = get_target("cpu", threads=1)
    std = standard_target()
    assert (fast.fingerprint()["timing"], std.fingerprint()["timing"]) == ("fast", "standard")
    assert {k: v for k, v in fast.fingerprint().items() if k != "timing"} == {
        k: v for k, v in std.fingerprint().items() if k != "timing"
    }
    assert fast.device_key() != std.device_key()
    for first, second in ((fast, std), (std, fast)):
        path = tmp_path / f"{first.fingerprint()['timing']}-first.sqlite"
        with LatencyCache(path) as cache:
            p1 = Profiler(first, cache, progress=False)
            p1.build(a)
            p2 = Profiler(second, cache, progress=False)
            p2.build(a)
            assert p1.measured > 0 and p2.reused == 0 and p2.measured >= cache.count(p2.device) > 0
            again = Profiler(first, cache, progress=False)
            again.build(a)  # the first protocol still finds its own entries
            # Exact for the constant standard figures; fast ones are noise, and bisection follows the values.
            assert again.reused == cache.count(p1.device) if first is std else again.reused > 0
    assert get_target("cpu-ort", threads=1).fingerprint()["timing"] == "fast"
    assert get_target("sim:rpi5").fingerprint()["timing"] == "standard"  # computed figures: nothing is timed
    torch.set_num_threads(1)
