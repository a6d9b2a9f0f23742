"""Simulated targets: an analytical per-op latency and energy model of hardware you don't have.

A target is described by a YAML spec (see `catalog/*.yaml`, each number with its source). Names:
`sim:<catalog-name>` (e.g. `sim:jetson-orin-nano`) or a path to a user's `board.yaml`.

The model, per op (everything here is deliberately simple; each simplification is stated):

* **Conv / linear / matmul / attention** (compute ops). Channel counts are rounded *up* to the compute tile
  along the input- and output-channel dims (SIMD width, tensor-core fragment, systolic-array rows x cols),
  which is what makes latency a staircase in the width. Depthwise and grouped convs round only the total
  channel count to the output tile (their per-group reduction is 1..few channels; hardware runs them on the
  vector lanes, not the matrix unit). Latency is a roofline::

      latency = max(tiled_MACs * sparsity_factor / (peak_ops / 2 * compute_efficiency),
                    dram_bytes / (memory_bandwidth * bandwidth_efficiency)) + op_overhead

  `peak_ops` is the datasheet figure in ops/s (1 MAC = 2 ops); the efficiencies are separate fields so the
  peaks stay datasheet-true.
* **DRAM traffic.** Weights `W` and activations `A` (inputs + outputs) are each moved once when `W + A` fits
  in the on-chip buffer. When they don't, the op is blocked: one operand stays resident in buffer-sized
  chunks and the other is re-streamed once per chunk; the cheaper order is taken:
  `min(W + A * ceil(W / B), A + W * ceil(A / B))`. Real tilings are smarter (partial sums, halos); this
  captures the cliff, not its exact height. Specs with `memory_model: onchip` (dataflow NPUs with no
  external DRAM, or that cache parameters on chip: Hailo-8, Edge TPU) keep the working set on chip and move
  only the overflow `max(0, W + A - B)` over their external link (`memory_bandwidth`).
* **Everything else** (BN, ReLU, pooling, adds, softmax, layer norm, ...) is memory-bound:
  `(input + output bytes) / effective bandwidth + op_overhead`. Pure views (flatten, reshape, transpose,
  identity, eval-mode dropout) cost nothing.
* Bytes per element come from the simulated dtype (fp32 4, fp16/bf16 2, int8 1), whatever dtype the
  PyTorch model is in: the model runs once on this machine only to see shapes.
* **Energy** = tiled MACs * sparsity factor * energy_per_mac[dtype] + DRAM bytes * energy_per_dram_byte.
  Static/idle power is not modelled.

Which ops a model runs: every leaf `torch.nn` module (forward hooks; `nn.MultiheadAttention` is costed as a
whole: q/k/v projections, the two attention matmuls, the output projection), plus every tensor function
called outside those modules (a `TorchFunctionMode`): `F.linear`/`F.conv*`, `matmul`/`bmm`/`@`,
`F.scaled_dot_product_attention` (fused: the L x S score matrix stays on chip), and elementwise ops such as
residual adds. Custom leaf modules that are not `torch.nn` classes are looked through, so their functional
calls are counted. `einsum` and other exotic contractions are costed as elementwise (a known gap).

**Sparsity contract.** A conv/linear weight (the `nn.Parameter`, or the tensor passed to `F.linear`/`F.conv*`)
may carry an attribute `hwprune_sparsity`: a string `"N:M"` (e.g. `"2:4"`), `"unstructured:<fraction>"` or
`"block<R>x<C>:<fraction>"` (e.g. `"block4x1:0.5"`). The pattern's kind (`2:4`, `unstructured`, `block4x1`)
is looked up in the spec's `sparsity` table; a supported kind multiplies the op's compute time (and MAC
energy) by its speed factor; an unsupported one gives no speed-up. Memory traffic is unchanged (dense
weights are assumed to be stored; compressed formats are not modelled).

**Calibration.** `calibrate(spec, measured_target, layers)` fits compute efficiency, bandwidth efficiency and
per-op overhead of a spec to latencies measured on a real target (least squares on log latency) and reports
the simulator's error before and after; `save_spec` writes the fitted spec for `--target fitted.yaml`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from hwprune.core.errors import HwpruneError
from hwprune.hardware.fingerprint import fingerprint_key
from hwprune.hardware.targets import register_resolver
from hwprune.hardware.timing import Timing

#: Bumped whenever the formulas change, so cached tables built with an older model are not reused.
SIM_MODEL_VERSION = 1
CATALOG_DIR = Path(__file__).parent / "catalog"
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


# ---------------------------------------------------------------------------------------------- the spec


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
    dtypes = {}
    for dt, entry in dtypes_raw.items():
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
        dtypes[dt] = DtypeSpec(
            peak_ops=_number(_get(entry, "peak_ops", where, p), where, p + "peak_ops"),
            tile_in=tiles[0],
            tile_out=tiles[1],
            energy_per_mac=_number(
                _get(entry, "energy_per_mac", where, p), where, p + "energy_per_mac", positive=False
            ),
        )
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
    import yaml

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
    import yaml

    path = Path(path)
    header = [f"# hwprune hardware spec '{spec.name}' (written by hwprune.hardware.simulate.save_spec)."]
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


# ------------------------------------------------------------------------------------------ per-op model


@dataclass(frozen=True)
class OpCost:
    """The simulator's account of one op."""

    op: str  # e.g. "Conv2d", "linear", "matmul", "sdpa", "BatchNorm2d", "add_"
    macs: int  # true multiply-accumulates
    tiled_macs: int  # after rounding channels up to the tile (what the hardware executes)
    dram_bytes: float  # after the on-chip buffer model
    compute_s: float
    memory_s: float
    overhead_s: float
    latency_s: float
    energy_j: float
    sparsity_factor: float = 1.0


def _up(n: int, tile: int) -> int:
    return -(-int(n) // tile) * tile


def _numel(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def sparsity_kind(pattern: str) -> str:
    """`"2:4"` -> `"2:4"`, `"unstructured:0.9"` -> `"unstructured"`, `"block4x1:0.5"` -> `"block4x1"`."""
    p = str(pattern).strip().lower()
    head, _, _ = p.partition(":")
    if head.isdigit():  # N:M
        return p
    return head


class OpModel:
    """The per-op formulas for one spec at one dtype (all public methods return OpCost)."""

    def __init__(self, spec: HardwareSpec, dtype: str):
        self.spec = spec
        self.dtype = dtype
        self.d = spec.dtypes[dtype]
        self.bpe = DTYPE_BYTES[dtype]

    # traffic ------------------------------------------------------------------------------------------
    def traffic(self, weight_bytes: float, act_bytes: float) -> float:
        b = self.spec.onchip_buffer
        if self.spec.memory_model == "onchip":
            return max(0.0, weight_bytes + act_bytes - b)
        if weight_bytes + act_bytes <= b:
            return weight_bytes + act_bytes
        w_stationary = weight_bytes + act_bytes * math.ceil(weight_bytes / b)
        a_stationary = act_bytes + weight_bytes * math.ceil(act_bytes / b)
        return float(min(w_stationary, a_stationary))

    def sparsity_factor(self, pattern: str | None) -> float:
        if not pattern:
            return 1.0
        return float(self.spec.sparsity.get(sparsity_kind(pattern), 1.0))

    def _cost(self, op: str, macs: int, tiled: int, weight_elems: int, act_elems: int, factor: float) -> OpCost:
        s = self.spec
        dram = self.traffic(weight_elems * self.bpe, act_elems * self.bpe)
        compute = tiled * factor / (self.d.peak_ops / 2 * s.compute_efficiency)
        memory = dram / (s.memory_bandwidth * s.bandwidth_efficiency)
        energy = tiled * factor * self.d.energy_per_mac + dram * s.energy_per_dram_byte
        return OpCost(
            op,
            int(macs),
            int(tiled),
            dram,
            compute,
            memory,
            s.op_overhead,
            max(compute, memory) + s.op_overhead,
            energy,
            factor,
        )

    # compute ops --------------------------------------------------------------------------------------
    def conv(
        self,
        op: str,
        x_shape: Sequence[int],
        out_shape: Sequence[int],
        weight_shape: Sequence[int],
        groups: int,
        transposed: bool = False,
        bias_elems: int = 0,
        sparsity: str | None = None,
    ) -> OpCost:
        """A conv: weight [C_out, C_in/g, *k] (or [C_in, C_out/g, *k] when transposed)."""
        k = _numel(weight_shape[2:])
        spatial_dims = len(weight_shape) - 2
        batch = _numel(out_shape[: len(out_shape) - spatial_dims - 1])  # 1 for unbatched input
        if transposed:
            c_in, c_out = weight_shape[0], weight_shape[1] * groups
            pixels = batch * _numel(x_shape[len(x_shape) - spatial_dims :])  # every input pixel scatters
        else:
            c_out, c_in = weight_shape[0], weight_shape[1] * groups
            pixels = batch * _numel(out_shape[len(out_shape) - spatial_dims :])
        cin_g, cout_g = c_in // groups, c_out // groups
        macs = pixels * c_out * cin_g * k if not transposed else pixels * c_in * cout_g * k
        if groups == 1:
            tiled = pixels * _up(c_out, self.d.tile_out) * _up(c_in, self.d.tile_in) * k
        elif not transposed:  # grouped / depthwise: vector lanes across channels, no tile on the per-group reduction
            tiled = pixels * _up(c_out, self.d.tile_out) * cin_g * k
        else:
            tiled = pixels * _up(c_in, self.d.tile_out) * cout_g * k
        w = _numel(weight_shape) + bias_elems
        return self._cost(op, macs, tiled, w, _numel(x_shape) + _numel(out_shape), self.sparsity_factor(sparsity))

    def linear(
        self, op: str, x_shape: Sequence[int], in_f: int, out_f: int, bias: bool = True, sparsity: str | None = None
    ) -> OpCost:
        rows = _numel(x_shape) // max(in_f, 1)
        macs = rows * in_f * out_f
        tiled = rows * _up(in_f, self.d.tile_in) * _up(out_f, self.d.tile_out)
        w = in_f * out_f + (out_f if bias else 0)
        return self._cost(op, macs, tiled, w, rows * (in_f + out_f), self.sparsity_factor(sparsity))

    def matmul(self, op: str, a_shape: Sequence[int], b_shape: Sequence[int], out_shape: Sequence[int]) -> OpCost:
        """a [..., n, k] @ b [..., k, m]: k is the reduction (input-channel) dim, m the output dim."""
        a_shape = list(a_shape) if len(a_shape) >= 2 else [1, *a_shape]
        b_shape = list(b_shape) if len(b_shape) >= 2 else [*b_shape, 1]
        k, m = a_shape[-1], b_shape[-1]
        rows = _numel(out_shape) // max(m, 1) if len(out_shape) else 1
        macs = rows * k * m
        tiled = rows * _up(k, self.d.tile_in) * _up(m, self.d.tile_out)
        # The right operand plays the weights' role in the re-read model.
        return self._cost(op, macs, tiled, _numel(b_shape), _numel(a_shape) + _numel(out_shape), 1.0)

    def attention(
        self, op: str, q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int], out_shape: Sequence[int]
    ) -> OpCost:
        """Fused softmax(q k^T) v: two matmuls, the L x S scores never leave the chip."""
        L, E = q_shape[-2], q_shape[-1]
        S, Ev = k_shape[-2], v_shape[-1]
        heads = _numel(q_shape[:-2])
        macs = heads * L * S * (E + Ev)
        t_in, t_out = self.d.tile_in, self.d.tile_out
        tiled = heads * L * (_up(S, t_out) * _up(E, t_in) + _up(Ev, t_out) * _up(S, t_in))
        kv = _numel(k_shape) + _numel(v_shape)
        return self._cost(op, macs, tiled, kv, _numel(q_shape) + _numel(out_shape), 1.0)

    # memory-bound ops ---------------------------------------------------------------------------------
    def elementwise(self, op: str, elems: int) -> OpCost:
        return self._cost(op, 0, 0, 0, elems, 1.0)


# ------------------------------------------------------------------------------------------ model walk

_MATMULS = {"matmul", "__matmul__", "__rmatmul__", "bmm", "mm", "baddbmm", "addmm", "addbmm"}
_CONVS = {"conv1d", "conv2d", "conv3d"}
_TCONVS = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
#: Leaf modules that only re-view their input (no kernel runs).
_FREE_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _tensors(xs) -> list[torch.Tensor]:
    out = []
    for x in xs:
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (tuple, list)):
            out += _tensors(x)
        elif isinstance(x, dict):
            out += _tensors(list(x.values()))
    return out


def _storage(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return -1


def _weight_sparsity(w) -> str | None:
    return getattr(w, "hwprune_sparsity", None) if w is not None else None


def _is_hooked(m: nn.Module) -> bool:
    """Costed as one unit: leaf torch.nn modules and MultiheadAttention. Other modules are looked through."""
    if isinstance(m, nn.MultiheadAttention):
        return True
    return not any(True for _ in m.children()) and type(m).__module__.startswith("torch.nn")


class _Profiler(TorchFunctionMode):
    """Collects OpCosts while a model runs: hooked modules by hooks, everything else by the function mode."""

    def __init__(self, ops: OpModel):
        super().__init__()
        self.ops = ops
        self.costs: list[OpCost] = []
        self.depth = 0  # > 0 while inside a hooked module: its inner calls are part of its cost
        self.busy = False  # our own bookkeeping calls are not the model's ops

    # hooks ---------------------------------------------------------------------------------------------
    def pre_hook(self, mod, args):
        self.depth += 1

    def post_hook(self, mod, args, out):
        self.depth -= 1
        if self.depth == 0:
            self.busy = True
            try:
                self.costs += module_costs(self.ops, mod, args, out)
            finally:
                self.busy = False

    # function mode -------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0 and not self.busy:
            self.busy = True
            try:
                self.costs += function_costs(self.ops, func, args, kwargs, out)
            finally:
                self.busy = False
        return out


def module_costs(ops: OpModel, mod: nn.Module, args, out) -> list[OpCost]:
    """The OpCosts of one hooked module call."""
    name = type(mod).__name__
    ins = _tensors(args)
    outs = _tensors([out])
    if not ins or not outs:
        return []
    x, y = ins[0], outs[0]
    if isinstance(mod, nn.Linear):
        return [
            ops.linear(
                name, x.shape, mod.in_features, mod.out_features, mod.bias is not None, _weight_sparsity(mod.weight)
            )
        ]
    if isinstance(mod, nn.modules.conv._ConvNd):
        return [
            ops.conv(
                name,
                x.shape,
                y.shape,
                mod.weight.shape,
                mod.groups,
                mod.transposed,
                0 if mod.bias is None else mod.bias.numel(),
                _weight_sparsity(mod.weight),
            )
        ]
    if isinstance(mod, nn.MultiheadAttention):
        return _mha_costs(ops, mod, ins, y)
    if isinstance(mod, _FREE_MODULES):
        return []
    return [ops.elementwise(name, sum(t.numel() for t in ins) + sum(t.numel() for t in outs))]


def _mha_costs(ops: OpModel, mod: nn.MultiheadAttention, ins: list[torch.Tensor], y: torch.Tensor) -> list[OpCost]:
    q = ins[0]
    k = ins[1] if len(ins) > 1 else q
    v = ins[2] if len(ins) > 2 else k
    e, h = mod.embed_dim, mod.num_heads
    kdim, vdim = mod.kdim, mod.vdim
    sp = _weight_sparsity(mod.in_proj_weight) if mod.in_proj_weight is not None else None
    seq_dim = 1 if mod.batch_first or q.dim() == 2 else 0
    L, S = q.shape[seq_dim] if q.dim() > 1 else 1, k.shape[seq_dim] if k.dim() > 1 else 1
    batch = q.numel() // (L * e)
    qs, ks = (batch, h, L, e // h), (batch, h, S, e // h)
    return [
        ops.linear("MHA.q_proj", q.shape, e, e, mod.in_proj_bias is not None, sp),
        ops.linear("MHA.k_proj", k.shape, kdim, e, mod.in_proj_bias is not None, sp),
        ops.linear("MHA.v_proj", v.shape, vdim, e, mod.in_proj_bias is not None, sp),
        ops.attention("MHA.attention", qs, ks, ks, qs),
        ops.linear("MHA.out_proj", y.shape, e, e, mod.out_proj.bias is not None, _weight_sparsity(mod.out_proj.weight)),
    ]


def function_costs(ops: OpModel, func, args, kwargs, out) -> list[OpCost]:
    """The OpCosts of one tensor function called outside hooked modules."""
    name = getattr(func, "__name__", str(func))
    ins = _tensors(list(args) + list(kwargs.values()))
    outs = _tensors([out])
    if not ins or not outs:
        return []  # factories, shape queries, .size(), ...
    y = outs[0]
    if name == "linear":
        w = args[1] if len(args) > 1 else kwargs["weight"]
        b = args[2] if len(args) > 2 else kwargs.get("bias")
        return [ops.linear(name, ins[0].shape, w.shape[-1], w.shape[0], b is not None, _weight_sparsity(w))]
    if name in _CONVS or name in _TCONVS:
        w = args[1] if len(args) > 1 else kwargs["weight"]
        b = args[2] if len(args) > 2 else kwargs.get("bias")
        groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)  # position 6 in conv* and conv_transpose*
        return [
            ops.conv(
                name,
                ins[0].shape,
                y.shape,
                w.shape,
                int(groups),
                name in _TCONVS,
                0 if b is None else b.numel(),
                _weight_sparsity(w),
            )
        ]
    if name in _MATMULS:
        a, b = (ins[-2], ins[-1]) if name in {"baddbmm", "addmm", "addbmm"} else (ins[0], ins[1])
        if name == "__rmatmul__":
            a, b = b, a
        return [ops.matmul(name, a.shape, b.shape, y.shape)]
    if name == "scaled_dot_product_attention":
        q, k, v = ins[0], ins[1], ins[2]
        return [ops.attention("sdpa", q.shape, k.shape, v.shape, y.shape)]
    in_place = name.endswith("_") and not name.startswith("__")
    if not in_place and any(_storage(y) == _storage(t) for t in ins):
        return []  # a view: no kernel, no traffic
    return [ops.elementwise(name, sum(t.numel() for t in ins) + sum(t.numel() for t in outs))]


def _run(model: nn.Module, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def profile(model: nn.Module, inputs, ops: OpModel) -> list[OpCost]:
    """Run the model once on this machine (for shapes) and cost every op it runs, in order."""
    prof = _Profiler(ops)
    mods = [m for m in model.modules() if _is_hooked(m)]
    handles = [m.register_forward_pre_hook(prof.pre_hook) for m in mods]
    handles += [m.register_forward_hook(prof.post_hook) for m in mods]
    try:
        with torch.no_grad(), prof:
            _run(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return prof.costs


def _layer_out_shape(layer: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """Output shape of a conv/linear without running it on real data (meta tensors)."""
    if isinstance(layer, nn.Linear):
        return (*x.shape[:-1], layer.out_features)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        xm = torch.empty(x.shape, device="meta")
        wm = torch.empty(layer.weight.shape, device="meta")
        return tuple(layer._conv_forward(xm, wm, None).shape)
    return None


# ------------------------------------------------------------------------------------------ the target


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
        }

    def device_key(self) -> str:
        return fingerprint_key(self.fingerprint())

    # per layer -----------------------------------------------------------------------------------------
    def layer_cost(self, layer: nn.Module, x: torch.Tensor) -> list[OpCost]:
        """The OpCosts of one layer on input x (conv/linear without running it; others by a forward pass)."""
        shape = _layer_out_shape(layer, x)
        if shape is not None:
            return module_costs(self.ops, layer, (x,), torch.empty(shape, device="meta"))
        layer.eval()
        return profile(layer, x, self.ops)

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


def get_simulated_target(name: str, dtype: str | None = None) -> SimulatedTarget:
    """Convenience: a SimulatedTarget from a catalog name or a YAML path."""
    key = name if name.startswith("sim:") or name.endswith((".yaml", ".yml")) else f"sim:{name}"
    return resolve_simulated(key)(dtype=dtype)


# ------------------------------------------------------------------------------------------ calibration


@dataclass
class CalibrationReport:
    """How far the simulator is from measurement, before and after fitting (abs % error per layer)."""

    spec: str
    measured_on: str  # the measured target's name
    dtype: str
    n_layers: int
    before_median_pct: float
    before_worst_pct: float
    after_median_pct: float
    after_worst_pct: float
    fitted: dict  # compute_efficiency, bandwidth_efficiency, op_overhead
    rows: list[dict] = field(default_factory=list)  # per layer: description, measured_s, before_s, after_s

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        f = self.fitted
        return (
            f"calibrated {self.spec} on {self.measured_on} ({self.n_layers} layers, {self.dtype}): "
            f"median error {self.before_median_pct:.1f}% -> {self.after_median_pct:.1f}%, "
            f"worst {self.before_worst_pct:.1f}% -> {self.after_worst_pct:.1f}%; "
            f"compute efficiency {f['compute_efficiency']:.3g}, bandwidth efficiency {f['bandwidth_efficiency']:.3g}, "
            f"op overhead {f['op_overhead'] * 1e6:.3g} us"
        )


def describe_layer(layer: nn.Module, x: torch.Tensor) -> str:
    if isinstance(layer, nn.Linear):
        return f"Linear {layer.in_features}->{layer.out_features} x{tuple(x.shape)}"
    if isinstance(layer, nn.modules.conv._ConvNd):
        k = "x".join(str(v) for v in layer.kernel_size)
        g = f" g{layer.groups}" if layer.groups > 1 else ""
        return f"{type(layer).__name__} {layer.in_channels}->{layer.out_channels} k{k}{g} x{tuple(x.shape)}"
    return f"{type(layer).__name__} x{tuple(x.shape)}"


def _terms(spec: HardwareSpec, dtype: str, layers) -> list[list[tuple[float, float]]]:
    """Per layer, per op: (compute s, memory s) at efficiency 1, to be scaled by 1/efficiency in the fit."""
    unit = replace(spec, compute_efficiency=1.0, bandwidth_efficiency=1.0, op_overhead=0.0)
    t = SimulatedTarget(unit, dtype=dtype)
    return [[(c.compute_s, c.memory_s) for c in t.layer_cost(m, x)] for m, x in layers]


def _predict(terms, u: np.ndarray, v: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Latency of every layer for arrays of (1/compute eff, 1/bandwidth eff, overhead); shape [..., n_layers]."""
    cols = []
    for ops in terms:
        total = np.zeros(np.broadcast(u, v, o).shape)
        for c, m in ops:
            total = total + np.maximum(c * u, m * v) + o
        cols.append(total)
    return np.stack(cols, axis=-1)


def _errors_pct(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.abs(pred - meas) / meas * 100.0


def calibrate(
    spec: HardwareSpec, measured_target, layers: Sequence[tuple[nn.Module, torch.Tensor]], dtype: str | None = None
) -> tuple[HardwareSpec, CalibrationReport]:
    """Fit a spec's compute efficiency, bandwidth efficiency and per-op overhead to measured layer latencies.

    `measured_target` is any target (e.g. `get_target("cpu")`); each layer is timed on it with `time_layer`.
    The fit minimises the squared error of log latency (relative errors weigh small and large layers alike):
    a coarse grid over four decades either side of the spec's values, then a pattern search. The peaks, tiles
    and energies are left as they are, so a fitted spec stays comparable to its datasheet figures.

    `dtype` defaults to the measured target's dtype when the spec has it, else the spec's default.
    """
    layers = list(layers)
    if len(layers) < 3:
        raise HwpruneError(f"calibration needs at least 3 layers to fit 3 parameters, got {len(layers)}")
    if dtype is None:
        fp_dtype = canonical_dtype(measured_target.fingerprint().get("dtype", ""))
        dtype = fp_dtype if fp_dtype in spec.dtypes else spec.default_dtype
    dtype = canonical_dtype(dtype)
    if dtype not in spec.dtypes:
        raise HwpruneError(f"spec {spec.name} has no {dtype}; choose one of {', '.join(spec.dtypes)}")
    meas = np.array([measured_target.time_layer(m, x).median for m, x in layers], dtype=float)
    if not np.all(meas > 0):
        raise HwpruneError("a measured layer latency is zero or negative; cannot calibrate on it")
    terms = _terms(spec, dtype, layers)
    log_meas = np.log(meas)

    def loss(lu, lv, lo):
        pred = _predict(terms, np.exp(lu), np.exp(lv), np.exp(lo))
        return ((np.log(pred) - log_meas) ** 2).sum(-1)

    # Coarse grid in log space around the spec's own values (u = 1/efficiency).
    lu0, lv0 = -math.log(spec.compute_efficiency), -math.log(spec.bandwidth_efficiency)
    span = np.linspace(-4, 4, 33) * math.log(10)
    lo_grid = np.log(np.concatenate([[1e-12], np.logspace(-8, -1, 29)]))
    LU, LV, LO = np.meshgrid(lu0 + span, lv0 + span, lo_grid, indexing="ij")
    grid_loss = loss(LU, LV, LO)
    i = np.unravel_index(np.argmin(grid_loss), grid_loss.shape)
    p = np.array([LU[i], LV[i], LO[i]])
    best = float(grid_loss[i])
    # Pattern search: step each parameter up and down, halve the step when nothing improves.
    step = math.log(10) / 8
    while step > 1e-5:
        improved = False
        for d in range(3):
            for sgn in (1.0, -1.0):
                q = p.copy()
                q[d] += sgn * step
                lq = float(loss(q[0], q[1], q[2]))
                if lq < best - 1e-15:
                    p, best, improved = q, lq, True
        if not improved:
            step /= 2
    ce, be, oh = math.exp(-p[0]), math.exp(-p[1]), math.exp(p[2])
    if oh < 1e-11:
        oh = 0.0
    before = _predict(
        terms,
        np.array(1 / spec.compute_efficiency),
        np.array(1 / spec.bandwidth_efficiency),
        np.array(spec.op_overhead),
    )
    after = _predict(terms, np.array(1 / ce), np.array(1 / be), np.array(oh))
    eb, ea = _errors_pct(before, meas), _errors_pct(after, meas)
    fitted_vals = {"compute_efficiency": ce, "bandwidth_efficiency": be, "op_overhead": oh}
    report = CalibrationReport(
        spec=spec.name,
        measured_on=getattr(measured_target, "name", type(measured_target).__name__),
        dtype=dtype,
        n_layers=len(layers),
        before_median_pct=float(np.median(eb)),
        before_worst_pct=float(eb.max()),
        after_median_pct=float(np.median(ea)),
        after_worst_pct=float(ea.max()),
        fitted=fitted_vals,
        rows=[
            {"layer": describe_layer(m, x), "measured_s": float(t), "before_s": float(b), "after_s": float(a)}
            for (m, x), t, b, a in zip(layers, meas, before, after)
        ],
    )
    fp = measured_target.fingerprint() if hasattr(measured_target, "fingerprint") else {}
    fitted = replace(
        spec,
        name=spec.name if spec.name.endswith("-fitted") else f"{spec.name}-fitted",
        description=f"{spec.description}, calibrated on {fp.get('cpu', report.measured_on)}",
        compute_efficiency=ce,
        bandwidth_efficiency=be,
        op_overhead=oh,
        calibration={
            "from_spec": spec.source or spec.name,
            "measured_on": report.measured_on,
            "device_key": measured_target.device_key() if hasattr(measured_target, "device_key") else "",
            "dtype": dtype,
            "n_layers": len(layers),
            "median_abs_error_pct": {"before": report.before_median_pct, "after": report.after_median_pct},
            "worst_abs_error_pct": {"before": report.before_worst_pct, "after": report.after_worst_pct},
        },
        source="",
    )
    return fitted, report


def calibration_layers(
    model: nn.Module,
    example_inputs,
    fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    max_layers: int | None = None,
) -> list[tuple[nn.Module, torch.Tensor]]:
    """Fresh copies of a model's conv/linear layers at a few fractions of their prunable widths.

    Widths scale only where the layer's input/output belongs to a prunable group (as the pruner would change
    them); duplicates are dropped. `max_layers` keeps an evenly spread subset.
    """
    from hwprune.groups.analysis import analyze

    analysis = analyze(model, example_inputs)
    seen: set[tuple] = set()
    out: list[tuple[nn.Module, torch.Tensor]] = []
    for info in analysis.layers:
        for f in fractions:
            c_out = max(1, round(info.out_channels * f)) if info.out_group else info.out_channels
            c_in = max(1, round(info.in_channels * f)) if info.in_group else info.in_channels
            if info.depthwise:
                c_in = c_out
            key = (info.signature(), c_in, c_out)
            if key in seen:
                continue
            seen.add(key)
            out.append(info.build(c_in, c_out))
    if max_layers is not None and len(out) > max_layers:
        idx = np.unique(np.round(np.linspace(0, len(out) - 1, max_layers)).astype(int))
        out = [out[i] for i in idx]
    return out
