"""Hardware specs of simulated targets: the YAML format, its validation, and the built-in catalog.

A spec describes one platform (see `catalog/*.yaml`, each number with its source): datasheet peaks per
number format (`dtypes`), compute tiles, memory bandwidth, capacity and on-chip buffer, the fractions of
peak a real kernel reaches (`efficiency`), a fixed per-op overhead, energies, and the speed factor of each
supported sparsity pattern. `parse_spec` validates a dict and names the file and the field of any error;
`load_spec` reads a file or a catalog entry; `save_spec` writes one back (e.g. a calibrated spec).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from hwprune.core.errors import HwpruneError

CATALOG_DIR = Path(__file__).parent.parent / "catalog"
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
_DTYPE_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "qint8": "int8",
    "uint8": "int8",
}
MEMORY_MODELS = ("dram", "onchip")
_TOP_FIELDS = {
    "name",
    "description",
    "kind",
    "default_dtype",
    "memory_model",
    "memory_bandwidth",
    "memory_capacity",
    "onchip_buffer",
    "op_overhead",
    "efficiency",
    "energy_per_dram_byte",
    "dtypes",
    "sparsity",
    "calibration",
}
_DTYPE_FIELDS = {"peak_ops", "tile_in", "tile_out", "energy_per_mac"}


@dataclass(frozen=True)
class DtypeSpec:
    """What the hardware does in one number format."""

    peak_ops: float  # ops/s, datasheet peak (1 MAC = 2 ops)
    tile_in: int  # input channels are rounded up to a multiple of this
    tile_out: int  # output channels likewise
    energy_per_mac: float  # J


@dataclass(frozen=True)
class HardwareSpec:
    """One platform, as loaded and validated from YAML."""

    name: str
    description: str
    kind: str
    default_dtype: str
    memory_model: str  # dram | onchip
    memory_bandwidth: float  # bytes/s (external DRAM, or the host link for `onchip`)
    memory_capacity: float  # bytes
    onchip_buffer: float  # bytes
    op_overhead: float  # s, fixed per op (launch, dispatch, sync)
    compute_efficiency: float  # fraction of peak a real kernel reaches
    bandwidth_efficiency: float  # fraction of peak bandwidth a real kernel reaches
    energy_per_dram_byte: float  # J
    dtypes: dict[str, DtypeSpec]
    sparsity: dict[str, float] = field(default_factory=dict)  # pattern kind -> compute-time factor
    calibration: dict = field(default_factory=dict)  # provenance of a fitted spec
    source: str = ""  # the file it came from

    def to_dict(self) -> dict:
        """The YAML layout (what `load_spec` reads back)."""
        d = {
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "default_dtype": self.default_dtype,
            "memory_model": self.memory_model,
            "memory_bandwidth": self.memory_bandwidth,
            "memory_capacity": self.memory_capacity,
            "onchip_buffer": self.onchip_buffer,
            "op_overhead": self.op_overhead,
            "efficiency": {"compute": self.compute_efficiency, "bandwidth": self.bandwidth_efficiency},
            "energy_per_dram_byte": self.energy_per_dram_byte,
            "dtypes": {k: asdict(v) for k, v in self.dtypes.items()},
            "sparsity": dict(self.sparsity),
        }
        if self.calibration:
            d["calibration"] = self.calibration
        return d

    def content_hash(self) -> str:
        """Hash of the spec's numbers (not its comments): editing a figure invalidates cached tables."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _number(value, where: str, field_name: str, *, positive: bool = True) -> float:
    # PyYAML reads `1e9` (no dot, no exponent sign) as a string; accept any string float() accepts.
    if isinstance(value, bool) or value is None:
        raise HwpruneError(f"hardware spec {where}: field '{field_name}' must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise HwpruneError(f"hardware spec {where}: field '{field_name}' must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise HwpruneError(f"hardware spec {where}: field '{field_name}' must be finite, got {value!r}")
    if positive and x <= 0:
        raise HwpruneError(f"hardware spec {where}: field '{field_name}' must be > 0, got {value!r}")
    if not positive and x < 0:
        raise HwpruneError(f"hardware spec {where}: field '{field_name}' must be >= 0, got {value!r}")
    return x


def _get(d: dict, key: str, where: str, prefix: str = ""):
    if key not in d:
        raise HwpruneError(f"hardware spec {where}: missing field '{prefix}{key}'")
    return d[key]


def _mapping(value, where: str, field_name: str) -> dict:
    if not isinstance(value, dict):
        raise HwpruneError(f"hardware spec {where}: field '{field_name}' must be a mapping")
    return value


def canonical_dtype(dtype: str) -> str:
    d = str(dtype).lower().removeprefix("torch.")
    return _DTYPE_ALIASES.get(d, d)


def _parse_dtype(dt: str, entry, where: str) -> DtypeSpec:
    if dt not in DTYPE_BYTES:
        raise HwpruneError(f"hardware spec {where}: dtype 'dtypes.{dt}' unknown; use {', '.join(DTYPE_BYTES)}")
    entry = _mapping(entry, where, f"dtypes.{dt}")
    extra = sorted(set(entry) - _DTYPE_FIELDS)
    if extra:
        raise HwpruneError(f"hardware spec {where}: unknown field 'dtypes.{dt}.{extra[0]}'")
    p = f"dtypes.{dt}."
    tiles = []
    for t in ("tile_in", "tile_out"):
        v = _number(_get(entry, t, where, p), where, p + t)
        if v != int(v):
            raise HwpruneError(f"hardware spec {where}: field '{p}{t}' must be a whole number, got {v}")
        tiles.append(int(v))
    return DtypeSpec(
        peak_ops=_number(_get(entry, "peak_ops", where, p), where, p + "peak_ops"),
        tile_in=tiles[0],
        tile_out=tiles[1],
        energy_per_mac=_number(_get(entry, "energy_per_mac", where, p), where, p + "energy_per_mac", positive=False),
    )


def parse_spec(data, where: str = "<spec>") -> HardwareSpec:
    """Validate a spec dict (as read from YAML); errors name the file and the field."""
    data = _mapping(data, where, "<top level>")
    unknown = sorted(set(data) - _TOP_FIELDS)
    if unknown:
        raise HwpruneError(
            f"hardware spec {where}: unknown field '{unknown[0]}'; known: {', '.join(sorted(_TOP_FIELDS))}"
        )
    name = str(_get(data, "name", where))
    dtypes_raw = _mapping(_get(data, "dtypes", where), where, "dtypes")
    if not dtypes_raw:
        raise HwpruneError(f"hardware spec {where}: field 'dtypes' lists no dtype")
    dtypes = {dt: _parse_dtype(dt, entry, where) for dt, entry in dtypes_raw.items()}
    default = canonical_dtype(_get(data, "default_dtype", where))
    if default not in dtypes:
        raise HwpruneError(
            f"hardware spec {where}: field 'default_dtype' is '{default}', not one of dtypes ({', '.join(dtypes)})"
        )
    mm = str(data.get("memory_model", "dram"))
    if mm not in MEMORY_MODELS:
        raise HwpruneError(f"hardware spec {where}: field 'memory_model' must be one of {MEMORY_MODELS}, got '{mm}'")
    eff = _mapping(_get(data, "efficiency", where), where, "efficiency")
    sparsity = {}
    for k, v in _mapping(data.get("sparsity") or {}, where, "sparsity").items():
        sparsity[str(k)] = _number(v, where, f"sparsity.{k}")
    return HardwareSpec(
        name=name,
        description=str(data.get("description", name)),
        kind=str(data.get("kind", "")),
        default_dtype=default,
        memory_model=mm,
        memory_bandwidth=_number(_get(data, "memory_bandwidth", where), where, "memory_bandwidth"),
        memory_capacity=_number(_get(data, "memory_capacity", where), where, "memory_capacity"),
        onchip_buffer=_number(_get(data, "onchip_buffer", where), where, "onchip_buffer"),
        op_overhead=_number(_get(data, "op_overhead", where), where, "op_overhead", positive=False),
        compute_efficiency=_number(_get(eff, "compute", where, "efficiency."), where, "efficiency.compute"),
        bandwidth_efficiency=_number(_get(eff, "bandwidth", where, "efficiency."), where, "efficiency.bandwidth"),
        energy_per_dram_byte=_number(
            _get(data, "energy_per_dram_byte", where), where, "energy_per_dram_byte", positive=False
        ),
        dtypes=dtypes,
        sparsity=sparsity,
        calibration=dict(data.get("calibration") or {}),
        source=where,
    )


def load_spec(path_or_name: str | Path) -> HardwareSpec:
    """A spec from a YAML file, or a catalog entry by name (`jetson-orin-nano` or `sim:jetson-orin-nano`)."""
    s = str(path_or_name)
    key = s.removeprefix("sim:")
    catalog = catalog_paths()
    path = catalog[key] if key in catalog else Path(key)
    if not path.is_file():
        raise HwpruneError(
            f"hardware spec '{s}' not found: not a file and not in the catalog ({', '.join(sorted(catalog))})"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise HwpruneError(f"hardware spec {path}: not valid YAML{at}") from e
    return parse_spec(data, str(path))


def save_spec(spec: HardwareSpec, path: str | Path) -> Path:
    """Write a spec as YAML that `load_spec` / `--target path.yaml` reads back."""
    path = Path(path)
    header = [f"# hwprune hardware spec '{spec.name}' (written by hwprune.hardware.sim.save_spec)."]
    if spec.calibration:
        header.append(
            "# Efficiencies and op_overhead were fitted to measurements (see `calibration`); the peaks, tiles and"
        )
        header.append(f"# energies are copied from {spec.calibration.get('from_spec', 'the source spec')}, whose")
        header.append("# comments give their sources.")
    text = "\n".join(header) + "\n" + yaml.safe_dump(spec.to_dict(), sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def catalog_paths() -> dict[str, Path]:
    """Built-in specs: name (file stem) -> path."""
    return {p.stem: p for p in sorted(CATALOG_DIR.glob("*.yaml"))}
