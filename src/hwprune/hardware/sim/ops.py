"""The per-op cost model of a simulated target, and the profiler that finds which ops a model runs.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from hwprune.core.modules import call
from hwprune.hardware.sim.spec import DTYPE_BYTES, HardwareSpec

#: Bumped whenever the formulas change, so cached tables built with an older model are not reused.
SIM_MODEL_VERSION = 1


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


def profile(model: nn.Module, inputs, ops: OpModel) -> list[OpCost]:
    """Run the model once on this machine (for shapes) and cost every op it runs, in order."""
    prof = _Profiler(ops)
    mods = [m for m in model.modules() if _is_hooked(m)]
    handles = [m.register_forward_pre_hook(prof.pre_hook) for m in mods]
    handles += [m.register_forward_hook(prof.post_hook) for m in mods]
    try:
        with torch.no_grad(), prof:
            call(model, inputs)
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


def layer_costs(ops: OpModel, layer: nn.Module, x: torch.Tensor) -> list[OpCost]:
    """The OpCosts of one layer on input x (conv/linear without running it; others by a forward pass)."""
    shape = _layer_out_shape(layer, x)
    if shape is not None:
        return module_costs(ops, layer, (x,), torch.empty(shape, device="meta"))
    layer.eval()
    return profile(layer, x, ops)
