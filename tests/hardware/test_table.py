import numpy as np
import pytest
import torch
from tiny_models import tiny_cnn

from hwprune.core.errors import HwpruneError
from hwprune.cost.model import Profiler
from hwprune.groups.analysis import analyze
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.targets import get_target


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
