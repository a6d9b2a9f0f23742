import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from hwprune.core.modules import call
from hwprune.hardware.targets import register_target
from hwprune.hardware.timing import Timing

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
os.environ["HWPRUNE_TIMING"] = "fast"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped where torch sees none (CI never has one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own latency cache and example cache."""
    monkeypatch.setenv("HWPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HWPRUNE_TIMING", "fast")


@pytest.fixture
def tiny_file():
    return str(HERE / "tiny_models.py")


# A deterministic target for pipeline tests: latency is a formula of the layer shapes, not a measurement,
# so the closed loop and the budget check are exercised without timing noise. Registered the way a user
# adds a target.


def _layer_seconds(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> float:
    if isinstance(module, nn.Linear):
        macs = x.numel() // x.shape[-1] * module.in_features * module.out_features
    else:
        macs = out.numel() * module.in_channels // module.groups * int(torch.tensor(module.kernel_size).prod())
    return 1e-6 + macs * 1e-11


@register_target("analytic-test")
class AnalyticTarget:
    description = "tests only: 1 us + 10 ps per MAC for every conv/linear, plus 50 us per model call"
    eager = True  # it calls the model in this process: a decode step (hardware.regime) can be "timed" on it

    def __init__(self, threads=None):
        self.threads = 1

    def fingerprint(self):
        return {
            "cpu": "analytic",
            "threads": 1,
            "torch": torch.__version__,
            "dtype": "float32",
            "runtime": "formula",
            "physical_cores": 1,
            "logical_cores": 1,
        }

    def device_key(self):
        return "analytic-test"

    def time_layer(self, layer, x):
        with torch.no_grad():
            t = _layer_seconds(layer, x, layer(x))
        return Timing(t, t, t, 1)

    def time_models(self, models, inputs, final=False):
        out = []
        for m in models:
            total = [5e-5]
            hooks = [
                mod.register_forward_hook(lambda mod, a, o, total=total: total.append(_layer_seconds(mod, a[0], o)))
                for mod in m.modules()
                if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d))
            ]
            with torch.no_grad():
                call(m, inputs)
            for h in hooks:
                h.remove()
            t = sum(total)
            out.append(Timing(t, t, t, 1))
        return out
