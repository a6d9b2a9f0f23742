"""Simulated targets: an analytical per-op latency and energy model of hardware you don't have.

A target is described by a YAML spec (`spec`: format, validation, the built-in `catalog/*.yaml`), costed op
by op with a roofline over tiled MACs and DRAM traffic (`ops`), offered as `sim:<name>` or `board.yaml`
targets (`target`), and can be fitted to latencies measured on a real target (`fit`). Importing this
package registers the `sim:` names with `hwprune.hardware.targets`.
"""

from hwprune.hardware.sim.fit import CalibrationReport, calibrate, calibration_layers_from, describe_layer
from hwprune.hardware.sim.ops import (
    SIM_MODEL_VERSION,
    OpCost,
    OpModel,
    function_costs,
    layer_costs,
    module_costs,
    profile,
    sparsity_kind,
)
from hwprune.hardware.sim.spec import (
    CATALOG_DIR,
    DTYPE_BYTES,
    MEMORY_MODELS,
    DtypeSpec,
    HardwareSpec,
    canonical_dtype,
    catalog_paths,
    load_spec,
    parse_spec,
    save_spec,
)
from hwprune.hardware.sim.target import SimulatedTarget, resolve_simulated

__all__ = [
    "CATALOG_DIR",
    "DTYPE_BYTES",
    "MEMORY_MODELS",
    "SIM_MODEL_VERSION",
    "CalibrationReport",
    "DtypeSpec",
    "HardwareSpec",
    "OpCost",
    "OpModel",
    "SimulatedTarget",
    "calibrate",
    "calibration_layers_from",
    "canonical_dtype",
    "catalog_paths",
    "describe_layer",
    "function_costs",
    "layer_costs",
    "load_spec",
    "module_costs",
    "parse_spec",
    "profile",
    "resolve_simulated",
    "save_spec",
    "sparsity_kind",
]
