"""Simulated targets: a target whose latencies and energies come from the per-op model of a hardware spec.

Names: `sim:<catalog-name>` (e.g. `sim:jetson-orin-nano`), `sim:<path.yaml>` or a path to a user's
`board.yaml`; `resolve_simulated` is registered with `hwprune.hardware.targets`, so `get_target` accepts
them and `list_targets` lists the catalog. A simulated target is deterministic: its fingerprint holds the
spec's content hash and the model version, so editing a figure never reuses an older table.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.hardware.fingerprint import fingerprint_key
from hwprune.hardware.sim.ops import SIM_MODEL_VERSION, OpCost, OpModel, layer_costs, profile
from hwprune.hardware.sim.spec import HardwareSpec, canonical_dtype, catalog_paths, load_spec
from hwprune.hardware.targets import register_resolver
from hwprune.hardware.timing import Timing


class SimulatedTarget:
    """A target whose latencies come from the analytical model of a HardwareSpec (deterministic)."""

    def __init__(self, spec: HardwareSpec, dtype: str | None = None, threads: int | None = None, name: str = ""):
        # `threads` is accepted for the pipeline's uniform call and ignored: the spec describes the whole device.
        self.spec = spec
        self.name = name or f"sim:{spec.name}"
        self.description = spec.description
        dt = canonical_dtype(dtype) if dtype else spec.default_dtype
        if dt not in spec.dtypes:
            raise HwpruneError(f"target {self.name} has no {dt}; choose --dtype from {', '.join(spec.dtypes)}")
        self.dtype = dt
        self.ops = OpModel(spec, dt)
        self.threads = 1

    @property
    def memory_capacity(self) -> float:
        """Bytes of memory the model's weights and activations must fit in."""
        return self.spec.memory_capacity

    def fingerprint(self) -> dict:
        return {
            "cpu": f"simulated {self.spec.name}",
            "device": self.spec.description,
            "spec": self.spec.name,
            "spec_hash": self.spec.content_hash(),
            "simulator": SIM_MODEL_VERSION,
            "runtime": "hwprune-simulator",
            "dtype": self.dtype,
            "threads": 1,
            "physical_cores": "n/a",
            "logical_cores": "n/a",
            "torch": torch.__version__.split("+")[0],
            # Computed, not timed: HWPRUNE_TIMING=fast changes no figure, so a table is the standard one.
            "timing": "standard",
        }

    def device_key(self) -> str:
        return fingerprint_key(self.fingerprint())

    # per layer -----------------------------------------------------------------------------------------
    def layer_cost(self, layer: nn.Module, x: torch.Tensor) -> list[OpCost]:
        """The OpCosts of one layer on input x (conv/linear without running it; others by a forward pass)."""
        return layer_costs(self.ops, layer, x)

    def time_layer(self, layer: nn.Module, x: torch.Tensor) -> Timing:
        t = sum(c.latency_s for c in self.layer_cost(layer, x))
        return Timing(t, t, t, 1)

    def layer_energy(self, layer: nn.Module, x: torch.Tensor) -> float:
        """Joules for one call of the layer."""
        return sum(c.energy_j for c in self.layer_cost(layer, x))

    # whole models --------------------------------------------------------------------------------------
    def profile(self, model: nn.Module, inputs) -> list[OpCost]:
        """Every op the model runs with its simulated cost (for per-op reports)."""
        model.eval()
        return profile(model, inputs, self.ops)

    def time_models(self, models: Sequence[nn.Module], inputs, final: bool = False) -> list[Timing]:
        """Sum of the per-op model over every op each model runs (deterministic: `final` changes nothing)."""
        out = []
        for m in models:
            t = sum(c.latency_s for c in self.profile(m, inputs))
            out.append(Timing(t, t, t, 1))
        return out

    def model_energy(self, model: nn.Module, inputs) -> float:
        """Joules for one forward pass."""
        return sum(c.energy_j for c in self.profile(model, inputs))


def _describe(spec: HardwareSpec) -> str:
    return f"simulated: {spec.description} ({spec.default_dtype})"


def _catalog_entries() -> list[tuple[str, str]]:
    rows = []
    for name, path in catalog_paths().items():
        try:
            rows.append((f"sim:{name}", _describe(load_spec(path))))
        except HwpruneError as e:  # a broken built-in spec is listed with its error rather than hiding the rest
            rows.append((f"sim:{name}", f"invalid spec: {e}"))
    return rows


@register_resolver
def resolve_simulated(name: str):
    """`sim:<catalog-name>`, `sim:<path.yaml>` or `<path.yaml>` -> a factory for a SimulatedTarget."""
    if name.startswith("sim:"):
        key = name[4:]
        if key not in catalog_paths() and not key.endswith((".yaml", ".yml")):
            names = ", ".join(f"sim:{n}" for n in catalog_paths())
            raise HwpruneError(f"unknown simulated target '{name}'; catalog: {names} (or sim:path/to/board.yaml)")
    elif name.endswith((".yaml", ".yml")):
        key = name
    else:
        return None

    def factory(dtype: str | None = None, threads: int | None = None) -> SimulatedTarget:
        spec = load_spec(key)
        desc = _describe(spec) if key in catalog_paths() else f"simulated from {key}: {spec.description}"
        t = SimulatedTarget(spec, dtype=dtype, threads=threads, name=name)
        t.description = desc
        return t

    return factory


resolve_simulated.entries = _catalog_entries
