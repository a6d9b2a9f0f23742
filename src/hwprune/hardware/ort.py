"""ONNX Runtime on this machine's CPU: the `cpu-ort` target, and `export_onnx` for deploying a pruned model.

A model pruned for `cpu` (torch eager) is not necessarily the best one for ONNX Runtime: ORT fuses
Conv+BN+ReLU, pre-packs weights and picks its own kernels (MLAS), so its latency staircase differs and
the table is measured through ORT itself. Every layer and model is exported to ONNX in memory with
torch's TorchScript-based exporter (it runs offline and exports a layer in ~0.1 s; the torch.export-based
one takes ~3 s per layer here, too slow for a table of hundreds of entries) and timed with
`InferenceSession.run` by the protocol of MEASURING.md.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.files import write_file_atomic
from hwprune.core.modules import eval_mode
from hwprune.hardware.fingerprint import fingerprint, timing_mode
from hwprune.hardware.quant import graph_inputs, quantize_graph
from hwprune.hardware.targets import CpuTarget, register_target
from hwprune.hardware.timing import Timing, time_interleaved

#: ONNX opset of every export: 17 has LayerNormalization as one op (ViT, transformers) and every
#: torchvision classifier exports with it; ORT 1.32 runs opsets up to 23.
OPSET = 17
PROVIDER = "CPUExecutionProvider"
#: Runs before profiling starts to count (first runs allocate and pre-pack).
TIMING_WARMUP_RUNS = 5


def _as_args(inputs) -> tuple[tuple, dict]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def _input_names(inputs) -> list[str]:
    if isinstance(inputs, dict):
        return list(inputs)
    n = len(inputs) if isinstance(inputs, (tuple, list)) else 1
    return [f"input_{i}" for i in range(n)]


def input_arrays(inputs) -> dict[str, np.ndarray]:
    """The inputs as numpy arrays by ONNX input name, converted once (outside every timed region)."""
    args, kwargs = _as_args(inputs)
    values = list(kwargs.values()) if kwargs else list(args)
    return {
        n: np.ascontiguousarray(v.detach().cpu().numpy()) for n, v in zip(_input_names(inputs), values, strict=True)
    }


def dynamic_axes(inputs) -> dict[str, dict[int, str]]:
    """Batch (axis 0) dynamic on every input, and the sequence (axis 1) on integer inputs of two or more
    dimensions (token ids and masks of a text model), so the exported graph runs at any batch / length."""
    args, kwargs = _as_args(inputs)
    values = list(kwargs.values()) if kwargs else list(args)
    axes = {}
    for name, v in zip(_input_names(inputs), values, strict=True):
        ax = {0: "batch"}
        if v.dim() >= 2 and not v.is_floating_point():
            ax[1] = "sequence"
        axes[name] = ax
    return axes


def _export(model: nn.Module, inputs, f, dynamic: bool = False) -> None:
    args, kwargs = _as_args(inputs)
    try:
        with eval_mode(model), warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated, and about traced Python numbers; the
            # exported graph is checked by running it in ORT, so these say nothing about this model.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                args,
                f,
                kwargs=kwargs or None,
                input_names=_input_names(inputs),
                dynamic_axes=dynamic_axes(inputs) if dynamic else None,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except HwpruneError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise HwpruneError(
            f"cannot export {type(model).__name__} to ONNX ({type(e).__name__}: {msg}); "
            "use a torch target (e.g. --target cpu) for this model"
        ) from None


def onnx_bytes(model: nn.Module, inputs, dynamic: bool = False) -> bytes:
    """The model as a serialized ONNX graph (opset OPSET), traced on `inputs`; HwpruneError if it cannot be.

    `dynamic`: batch (and a text model's sequence length) are dynamic axes (`dynamic_axes`); else every
    shape is fixed to those of `inputs`, as latency is measured on them.
    """
    f = io.BytesIO()
    _export(model, inputs, f, dynamic)
    return f.getvalue()


def export_onnx(model: nn.Module, inputs, path: str | Path, dynamic: bool = False) -> Path:
    """Write `model` (e.g. a pruned one) as an ONNX file for deployment in ONNX Runtime, atomically."""
    return write_file_atomic(path, onnx_bytes(model, inputs, dynamic))


def session_options(threads: int) -> ort.SessionOptions:
    """Fixed threads, sequential execution, all graph optimisations (MEASURING.md rule 1)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Worker threads spin only while a run is active. By default they keep spinning after `run` returns,
    # and in interleaved timing (A B A B) session A's idle spinners would steal cores from session B.
    so.add_session_config_entry("session.force_spinning_stop", "1")
    so.log_severity_level = 3  # errors only: ORT warns about unused initializers of traced graphs
    return so


def timing_graph(model: nn.Module, inputs, quantize: str | None = None) -> bytes:
    """`model` as the graph a target times: fixed shapes, quantized when the target is int8."""
    graph = onnx_bytes(model, inputs)
    if quantize:
        # Calibrated on the inputs timed: int8 kernel times do not depend on the activation ranges.
        arrays = input_arrays(inputs)
        graph = quantize_graph(graph, quantize, [{n: arrays[n] for n in graph_inputs(graph)}])
    return graph


class _Runner:
    """One ORT session with its inputs bound as numpy arrays: calling it runs the graph once."""

    def __init__(self, graph: bytes, inputs, threads: int, options: ort.SessionOptions | None = None, what=""):
        try:
            self.session = ort.InferenceSession(graph, options or session_options(threads), providers=[PROVIDER])
        except Exception as e:
            raise HwpruneError(
                f"ONNX Runtime cannot load the exported {what or 'graph'} "
                f"({type(e).__name__}: {str(e).strip()[:200]}); use --target cpu for this model"
            ) from None
        arrays = input_arrays(inputs)
        # Constant folding can drop an input the graph never reads; feed only those the session declares.
        self.feed = {i.name: arrays[i.name] for i in self.session.get_inputs()}

    @classmethod
    def of(cls, model: nn.Module, inputs, threads: int, options=None, quantize: str | None = None) -> _Runner:
        return cls(timing_graph(model, inputs, quantize), inputs, threads, options, type(model).__name__)

    def __call__(self):
        return self.session.run(None, self.feed)


def _model_key(model: nn.Module) -> tuple:
    return (id(model), tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))


@register_target("cpu-ort")
class OrtCpuTarget(CpuTarget):
    """This machine's CPU through ONNX Runtime's CPU execution provider, float32, fixed intra-op threads.

    Threads and timing protocols as `cpu` (the pipeline's own torch work keeps the same thread count as
    the sessions); only what is timed differs.
    """

    description = "this machine's CPU, ONNX Runtime (CPU EP, all graph optimisations), float32, fixed threads"
    #: int8 quantization of every graph timed (hardware.quant.MODES), None for float32.
    quantize: str | None = None
    dtype = "float32"

    def fingerprint(self) -> dict:
        return {
            **fingerprint(
                self.threads,
                dtype=self.dtype,
                runtime=f"onnxruntime {ort.__version__}",
                timing=timing_mode(self.table_protocol, self.model_protocol),
            ),
            "provider": PROVIDER,
            "opset": OPSET,
            "inter_op_threads": 1,
            "graph_optimization": "ORT_ENABLE_ALL",
        }

    def runner(self, model: nn.Module, inputs) -> _Runner:
        """`model` exported to an ORT session with `inputs` bound: calling it runs the session once."""
        return _Runner.of(model, inputs, self.threads, quantize=self.quantize)

    def in_graph_times(self, model: nn.Module, inputs) -> list[NodeTime]:
        """Conv/linear kernels of `model` timed inside its whole ORT graph (see `in_graph_times`)."""
        return in_graph_times(model, inputs, self.threads, quantize=self.quantize)

    def time_models(self, models: Sequence[nn.Module], inputs, final: bool = False) -> list[Timing]:
        """Interleaved timing of several models' ORT sessions on the same inputs (A B A B ...).

        Each distinct model is exported once per call. `final`: the report's figure, timed 4x as long.
        """
        runners: dict[tuple, _Runner] = {}
        fns = []
        for m in models:
            key = _model_key(m)
            if key not in runners:
                runners[key] = self.runner(m, inputs)
            fns.append(runners[key])
        return time_interleaved(fns, self.protocol(final))

    def time_graphs(self, graphs: Sequence[bytes], inputs, final: bool = False) -> list[Timing]:
        """Interleaved timing of serialized ONNX graphs (e.g. the files deployed) on the same inputs."""
        return time_interleaved([_Runner(g, inputs, self.threads) for g in graphs], self.protocol(final))


@dataclass(frozen=True)
class NodeTime:
    """One kernel of a whole model as ONNX Runtime ran it: its op, tensor shapes and median time."""

    op: str
    input_shape: tuple[int, ...]  # the first input (the activation)
    output_shape: tuple[int, ...]
    seconds: float
    #: Median over the profiled runs of this kernel's time / that run's whole time. The machine's speed
    #: drifts between one timing and the next (the same plan read 7.3 ms and 11.0 ms a minute apart here),
    #: but within one run it slows every kernel alike, so the share is what carries over to another timing.
    share: float = float("nan")

    @property
    def is_conv(self) -> bool:
        """A conv kernel (else a linear one: Gemm / MatMul)."""
        return self.op in CONV_OPS

    def channels_first(self) -> NodeTime:
        """This kernel with its shapes read as channels-last (N, ..., C) moved to channels-first (N, C, ...):
        ORT runs an int8 graph's 2-D convs in NHWC (its NHWC transformer rewrites QLinearConv), and the
        profile gives no layout, so a conv is matched to a layer either way (cost.CostModel.add_in_graph)."""

        def move(s: tuple[int, ...]) -> tuple[int, ...]:
            return (s[0], s[-1], *s[1:-1]) if len(s) >= 3 else s

        return replace(self, input_shape=move(self.input_shape), output_shape=move(self.output_shape))

    def at(self, model_seconds: float) -> NodeTime:
        """This kernel's time in a run of the whole model that takes `model_seconds` (its share of it)."""
        return replace(self, seconds=self.share * model_seconds)


#: Ops that run a conv or linear layer once ORT has fused and re-laid-out the graph (float32, and the
#: kernels ORT fuses an int8 graph's QuantizeLinear/DequantizeLinear pairs into).
CONV_OPS = frozenset({"Conv", "FusedConv", "QLinearConv", "ConvInteger"})
WEIGHT_OPS = CONV_OPS | {
    "Gemm",
    "FusedGemm",
    "MatMul",
    "FusedMatMul",
    "QLinearMatMul",
    "QGemm",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
}


def in_graph_times(
    model: nn.Module, inputs, threads: int, runs: int = 20, quantize: str | None = None
) -> list[NodeTime]:
    """Median time of every conv/linear kernel of `model` inside its ORT graph, from ORT's own profiler.

    A layer timed alone (the latency table) is not the same kernel as inside the graph: there ORT fuses
    BatchNorm, ReLU and residual adds into the conv and keeps activations in its blocked layout between
    convs, while alone each call also converts its input and output. The profiler times every node of a
    real run, so the table can be corrected layer by layer (cost.CostModel.add_in_graph).
    """
    with tempfile.TemporaryDirectory(prefix="hwprune-ort-profile-") as tmp:
        so = session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "run")
        runner = _Runner.of(model, inputs, threads, so, quantize)
        for _ in range(TIMING_WARMUP_RUNS):
            runner()
        # Events of the warm-up runs are in the file too; only the last `runs` runs of each node count.
        for _ in range(runs):
            runner()
        events = json.loads(Path(runner.session.end_profiling()).read_text())
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run"][-runs:]
    # node -> (its first counted event's args, [(duration, duration / its run's duration)])
    by_node: dict[str, tuple[dict, list[tuple[float, float]]]] = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and args.get("op_name") in WEIGHT_OPS:
            run = next((b - a for a, b in spans if a <= e["ts"] <= b), None)
            if run:  # a kernel of a warm-up run falls in no counted span
                key = args.get("node_index", e["name"])
                by_node.setdefault(key, (args, []))[1].append((e["dur"], e["dur"] / run))
    out = []
    for args, times in by_node.values():
        ins, outs = args.get("input_type_shape") or [], args.get("output_type_shape") or []
        if not ins or not outs:
            continue
        shape_in, shape_out = next(iter(ins[0].values())), next(iter(outs[0].values()))
        durs, shares = zip(*times, strict=True)
        seconds = float(np.median(durs)) * 1e-6  # the profiler's unit is us
        out.append(NodeTime(args["op_name"], tuple(shape_in), tuple(shape_out), seconds, float(np.median(shares))))
    return out


@register_target("cpu-ort-int8")
class OrtInt8CpuTarget(OrtCpuTarget):
    """`cpu-ort` with every graph quantized as it is deployed: static int8 (hardware.quant), so the table
    and the closed loop see int8 kernels' staircase, not float32's."""

    description = (
        "this machine's CPU, ONNX Runtime, int8 static QDQ (uint8 activations, int8 per-channel weights), fixed threads"
    )
    quantize = "static"
    dtype = "int8-static-qdq-u8s8"


@register_target("cpu-ort-int8-dynamic")
class OrtInt8DynamicCpuTarget(OrtCpuTarget):
    """`cpu-ort` with int8 weights and activations quantized at run time: ORT's advice for transformers."""

    description = "this machine's CPU, ONNX Runtime, int8 dynamic (int8 weights, activations per batch), fixed threads"
    quantize = "dynamic"
    dtype = "int8-dynamic"
