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
import os
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
#: What a spec file holds, for the errors about a file that is not one.
_LAYOUT = "a spec is a YAML mapping of fields (name, dtypes, memory_bandwidth, ...; see hardware/catalog/*.yaml)"


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


#: Allowed range of every numeric field: (low, high, whether low itself is allowed, unit). The upper ends are
#: two to three decades beyond the largest figure in the catalog (an H100's 3.35e12 B/s, 80 GiB and 1.98e15
#: INT8 ops/s), so a real part fits and a typo of a few digits (1e21 for 1e12) does not. Efficiencies above 1
#: are allowed: `hwprune calibrate` fits them against the spec's peaks, and a measured machine faster than its
#: spec's datasheet peaks fits above 1.
RANGES: dict[str, tuple[float, float, bool, str]] = {
    "memory_bandwidth": (0.0, 1e15, False, "bytes/s"),
    "memory_capacity": (0.0, 1e15, False, "bytes"),
    "onchip_buffer": (0.0, 1e13, False, "bytes"),
    "op_overhead": (0.0, 1.0, True, "s"),
    "efficiency": (0.0, 1e3, False, "fraction of peak"),
    "energy_per_dram_byte": (0.0, 1e-6, True, "J"),
    "peak_ops": (0.0, 1e18, False, "ops/s"),
    "tile": (1.0, 65536.0, True, "channels"),
    "energy_per_mac": (0.0, 1e-6, True, "J"),
    "sparsity": (0.0, 10.0, False, "x the dense compute time"),
}


def _range_text(kind: str) -> str:
    lo, hi, closed, unit = RANGES[kind]
    return f"{'[' if closed else '('}{lo:g}, {hi:g}] {unit}"


def _number(value, where: str, field_name: str, kind: str) -> float:
    """`value` as a float within RANGES[kind]; the error names the field and the allowed range."""
    lo, hi, closed, _ = RANGES[kind]
    bad = f"hardware spec {where}: field '{field_name}' must be a number in {_range_text(kind)}, got {value!r}"
    # PyYAML reads `1e9` (no dot, no exponent sign) as a string; accept any string float() accepts.
    if isinstance(value, bool) or value is None:
        raise HwpruneError(bad)
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise HwpruneError(bad) from None
    if not math.isfinite(x) or x > hi or x < lo or (x == lo and not closed):
        raise HwpruneError(bad)
    return x


def _get(d: dict, key: str, where: str, prefix: str = ""):
    if key not in d:
        raise HwpruneError(f"hardware spec {where}: missing field '{prefix}{key}'")
    return d[key]


def _field(d: dict, key: str, where: str, prefix: str = "", kind: str | None = None) -> float:
    """The numeric field `prefix + key` of `d`, checked against RANGES[kind or key]."""
    return _number(_get(d, key, where, prefix), where, prefix + key, kind or key)


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
        v = _field(entry, t, where, p, "tile")
        if v != int(v):
            raise HwpruneError(f"hardware spec {where}: field '{p}{t}' must be a whole number, got {v}")
        tiles.append(int(v))
    return DtypeSpec(
        peak_ops=_field(entry, "peak_ops", where, p),
        tile_in=tiles[0],
        tile_out=tiles[1],
        energy_per_mac=_field(entry, "energy_per_mac", where, p),
    )


def parse_spec(data, where: str = "<spec>") -> HardwareSpec:
    """Validate a spec dict (as read from YAML); errors name the file and the field."""
    if data is None:
        raise HwpruneError(f"hardware spec {where}: the file is empty; {_LAYOUT}")
    if not isinstance(data, dict):
        raise HwpruneError(f"hardware spec {where}: the top level is a {type(data).__name__}; {_LAYOUT}")
    unknown = sorted(str(k) for k in data if k not in _TOP_FIELDS)
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
        sparsity[str(k)] = _number(v, where, f"sparsity.{k}", "sparsity")
    return HardwareSpec(
        name=name,
        description=str(data.get("description", name)),
        kind=str(data.get("kind", "")),
        default_dtype=default,
        memory_model=mm,
        memory_bandwidth=_field(data, "memory_bandwidth", where),
        memory_capacity=_field(data, "memory_capacity", where),
        onchip_buffer=_field(data, "onchip_buffer", where),
        op_overhead=_field(data, "op_overhead", where),
        compute_efficiency=_field(eff, "compute", where, "efficiency.", "efficiency"),
        bandwidth_efficiency=_field(eff, "bandwidth", where, "efficiency.", "efficiency"),
        energy_per_dram_byte=_field(data, "energy_per_dram_byte", where),
        dtypes=dtypes,
        sparsity=sparsity,
        calibration=dict(_mapping(data.get("calibration") or {}, where, "calibration")),
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
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise HwpruneError(f"hardware spec {path}: not a text file (byte {e.start} is not UTF-8); {_LAYOUT}") from None
    except OSError as e:
        raise HwpruneError(f"hardware spec {path}: cannot read it ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        if isinstance(e, yaml.reader.ReaderError):  # a NUL or other character YAML forbids, found before parsing
            at = f" (a control or binary character at byte {e.position})"
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)  # a reader (or a later --target) never sees half a spec
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise HwpruneError(f"cannot write the spec to {path} ({e.strerror or e})") from None
    return path


def catalog_paths() -> dict[str, Path]:
    """Built-in specs: name (file stem) -> path."""
    return {p.stem: p for p in sorted(CATALOG_DIR.glob("*.yaml"))}
