"""The report as typed data: dataclasses that round-trip to JSON, and the JSON Schema derived from them.

`Report.to_dict()` is what `report.json` holds; `Report.from_dict` reads it back (refusing another format
version in one line); `json_schema()` is generated from the dataclasses, so the schema file shipped next
to this module (`report.schema.json`) cannot drift from the code: a test compares the two.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwprune.core.errors import HwpruneError
from hwprune.hardware.stability import MachineState

#: Bumped whenever a field is renamed, removed or changes meaning; added optional fields keep it.
REPORT_FORMAT = "hwprune-report/3"
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")


@dataclass
class Latency:
    """Median and quartiles of one model's timed calls, seconds (and the two figures people read, in ms)."""

    median: float
    q1: float
    q3: float
    n: int
    iqr: float
    median_ms: float
    iqr_ms: float
    #: 95% confidence interval of the median (moving-block bootstrap over the calls, hardware.timing).
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None
    #: Why timing stopped: "tolerance" (interval narrow enough), "time cap", "calls" (fixed count).
    stopped: str = "calls"


@dataclass
class ModelFigures:
    """What was measured and counted for one model (dense or pruned)."""

    latency: Latency
    macs: int
    params: int
    size_bytes: int
    memory_bytes: int
    energy_j: float | None = None
    accuracy: float | None = None
    accuracy_oneshot: float | None = None
    #: A causal language model's held-out perplexity per token (the run's validation batches), after the run
    #: and one-shot (before fine-tuning).
    perplexity: float | None = None
    perplexity_oneshot: float | None = None


@dataclass
class BudgetRow:
    """One budget: its limit, the dense and pruned figures, whether it was met and the share of it used."""

    kind: str
    text: str
    relative: bool
    value: float
    limit: float
    dense: float
    pruned: float
    met: bool
    used: float
    #: The pruned figure's 95% interval (a counted figure: the figure itself).
    low: float | None = None
    high: float | None = None
    #: "met (95% confidence)", "met on the median only" or "not met".
    verdict: str = ""


@dataclass
class Headline:
    """The budget the report leads with: latency's when there is one, else the one closest to its limit."""

    text: str | None
    kind: str | None
    relative: bool | None
    value: float | None
    seconds: float | None
    met: bool
    used: float | None
    #: The weakest verdict of all budgets: "met (95% confidence)", "met on the median only", "not met".
    verdict: str = ""


@dataclass
class LoopFigure:
    """One budget in one loop iteration: the aim, the prediction, the measured median and its interval."""

    aim: float
    predicted: float
    measured: float
    used: float
    low: float | None = None
    high: float | None = None
    #: Measurements pooled for this figure (more than 1 when the first interval straddled an edge).
    measurements: int = 1


@dataclass
class LoopStep:
    """One closed-loop iteration: per budget kind, the aim, the prediction and the measurement."""

    iteration: int
    budgets: dict[str, LoopFigure] = field(default_factory=dict)


@dataclass
class GroupWidth:
    id: str
    size: int
    width: int


@dataclass
class TableBuild:
    """How the latency table was obtained: entries measured now and reused from the cache."""

    entries_measured: int
    cache_hits: int
    seconds: float
    cache: str
    device_key: str


@dataclass
class Measurement:
    """How the final interleaved measurement went: rounds, the interval reached and why it stopped."""

    rounds: int
    #: Half the ratio's interval, relative to it (0.02: +-2%).
    half_width: float
    tolerance: float | None
    stopped: str
    estimator: str
    confidence: float


@dataclass
class Deployment:
    """The deployable file written next to the model (an int8 target: model.int8.onnx) and how it runs:
    dense fp32, pruned fp32 and pruned deployed graphs timed interleaved on the target, in one measurement."""

    file: str
    format: str
    dtype: str
    int8_mode: str | None
    size_bytes: int
    #: The pruned model's float32 ONNX graph, for the size comparison.
    fp32_size_bytes: int
    dense_fp32_ms: float
    pruned_fp32_ms: float
    deployed_ms: float
    deployed_ci_ms: list[float]
    #: Dense fp32 / deployed, median of the per-round ratios, and its 95% interval.
    speedup: float
    speedup_ci: list[float]
    #: Pruned fp32 / deployed: what quantization alone adds.
    quantization_speedup: float
    quantization_speedup_ci: list[float]
    rounds: int
    #: The deployed graph against the pruned torch model (export.deploy.Parity).
    parity_on: str
    max_abs_diff: float
    #: The largest |output| of the pruned torch model on the same inputs (the scale of max_abs_diff).
    output_scale: float = 0.0
    agreement: float | None = None
    metric_fp32: float | None = None
    metric_deployed: float | None = None
    calibration: str = ""


@dataclass
class Training:
    """How recovery training went: its settings, its throughput and, with evaluation, the best step kept."""

    epochs: int
    steps: int
    optimizer: str
    schedule: str
    precision: str
    #: Processes taking part (DistributedDataParallel under torchrun; 1 otherwise).
    processes: int
    batch_size: int
    #: Training samples per second over all processes, and the wall-clock seconds of each epoch.
    samples_per_s: float
    seconds_per_epoch: list[float] = field(default_factory=list)
    #: The step whose weights were kept (keep-best), its metric, and where early stopping ended the run.
    best_step: int | None = None
    best_metric: float | None = None
    stopped_early_at: int | None = None
    #: The checkpoint directory this run resumed from, if any.
    resumed_from: str | None = None


@dataclass
class RegimeFigure:
    """A causal language model's latency in one regime, dense against pruned, interleaved: the budgeted regime
    (the run's final measurement) and the other one (measured after it)."""

    regime: str  # prefill | decode
    #: What one timed call is: "batch 1 x 256 tokens" (prefill), "1 token per sequence, context 256" (decode).
    call: str
    dense_ms: float
    pruned_ms: float
    ratio: float
    ratio_ci: list[float]
    budgeted: bool


@dataclass
class Staircase:
    """One group's measured latency over its width: the table's layers that read or write the group, summed
    at each candidate width with every other group at its pruned width (the staircase the allocator saw)."""

    group: str
    size: int
    #: The pruned model's width of the group.
    chosen: int
    widths: list[int]
    #: Table latency (ms) of the group's layers at each width.
    ms: list[float]
    #: Widths where the curve steps down by more than 5% of its dense figure going narrower.
    steps: list[int] = field(default_factory=list)


@dataclass
class Evaluation:
    """A metric recorded after the run (`hwprune evaluate DIR --data ...`): of the saved model, or of one the
    user fine-tuned themselves."""

    model: str
    data: str
    metric: float
    batches: int
    samples: int | None = None


@dataclass
class Report:
    """Everything `hwprune prune` found out; `report.md` is rendered from it (`report.files.markdown`)."""

    model: str
    settings: dict[str, Any]
    fingerprint: dict[str, Any]
    input_shape: list[int] | None
    budget: Headline
    budgets: list[BudgetRow]
    dense: ModelFigures
    pruned: ModelFigures
    speedup: float
    latency_ratio: float
    #: 95% intervals of the speedup and of the pruned/dense ratio (over the per-round ratios).
    speedup_ci: list[float]
    latency_ratio_ci: list[float]
    measurement: Measurement
    macs_ratio: float | None
    compression: float
    dense_latency_at_planning_ms: float
    measured_latency_ms: float
    measured_latency_ci_ms: list[float]
    #: "standard", or "fast" when timed with the test-only 3-call protocol (HWPRUNE_TIMING=fast).
    timing: str = "standard"
    machine: MachineState | None = None
    predicted_latency_ms: float | None = None
    predicted_ratio: float | None = None
    prediction_error: float | None = None
    latency_table: TableBuild | None = None
    loop: list[LoopStep] = field(default_factory=list)
    groups: list[GroupWidth] = field(default_factory=list)
    data: str | None = None
    notes: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    method: dict[str, Any] | None = None
    weight_sparsity: dict[str, Any] | None = None
    deployment: Deployment | None = None
    training: Training | None = None
    #: For the costliest groups (budget runs with a latency table): the measured staircase over width.
    staircases: list[Staircase] = field(default_factory=list)
    #: The command that reproduces the run (the CLI's own argv; None from the Python API).
    command: str | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    #: Causal language models with a prefill= or decode= budget: latency in both regimes.
    regimes: list[RegimeFigure] = field(default_factory=list)
    format: str = REPORT_FORMAT

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        if d.get("format") != REPORT_FORMAT:
            raise HwpruneError(
                f"report format {d.get('format')!r} is not {REPORT_FORMAT!r}; re-run `hwprune prune` to write a new one"
            )
        return from_dict(cls, d)

    @classmethod
    def load(cls, path: str | Path) -> Report:
        return cls.from_dict(json.loads(Path(path).read_text()))


def from_dict(cls: type, d: dict):
    """Build dataclass `cls` from plain data, nested dataclasses included; unknown keys are refused."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise HwpruneError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    return cls(**{k: _convert(hints[k], v) for k, v in d.items()})


def _convert(tp, value):
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if origin is list:
        return [_convert(args[0], v) for v in value]
    if origin is dict:
        return {k: _convert(args[1], v) for k, v in value.items()}
    return value


_SCALARS = {str: "string", bool: "boolean", int: "integer", float: "number"}


def _schema(tp, defs: dict) -> dict:
    if tp is Any:
        return {}
    if tp is type(None):
        return {"type": "null"}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    if dataclasses.is_dataclass(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # placeholder first: a recursive type refers to itself by name
            defs[tp.__name__] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema(a, defs) for a in args]}
    if origin is list:
        return {"type": "array", "items": _schema(args[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema(args[1], defs)}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _object_schema(cls: type, defs: dict) -> dict:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    out = {
        "type": "object",
        "description": " ".join((cls.__doc__ or cls.__name__).split()),
        "properties": {f.name: _schema(hints[f.name], defs) for f in fields},
        "required": required,
        "additionalProperties": False,
    }
    if cls is Report:
        out["properties"]["format"] = {"const": REPORT_FORMAT}
    return out


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of `report.json`, generated from the dataclasses above."""
    defs: dict = {}
    root = _object_schema(Report, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"hwprune report ({REPORT_FORMAT})",
        **root,
        "$defs": dict(sorted(defs.items())),
    }


def write_schema() -> Path:
    """Regenerate report.schema.json (`python -m hwprune.report.schema`) after changing a dataclass."""
    tmp = SCHEMA_FILE.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_schema(), indent=1) + "\n")
    tmp.replace(SCHEMA_FILE)  # atomically: a reader never sees half a schema
    return SCHEMA_FILE


if __name__ == "__main__":
    print(write_schema())
