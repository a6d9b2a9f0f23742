"""What a pruning run is told, as plain typed data: one dataclass per concern, every default set once here.

`PruneConfig` nests `MethodConfig` (what is removed and how it is chosen), `LoopConfig` (the hardware
allocator and its closed loop), `FinetuneConfig` and `TargetConfig`. Each field's metadata carries its
command-line flag and help text: the CLI builds its options from these fields (`options()`), so no default
or flag is written twice. Configs round-trip through `to_dict` / `from_dict` / `from_yaml`; `from_dict`
takes nested sections (`{"method": {"criterion": "l1"}}`) or the flat flag names a recipe uses
(`{"criterion": "l1", "finetune-epochs": 4}`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hwprune.core.errors import HwpruneError
from hwprune.finetune.trainer import TrainConfig, TrainConfigError, check_features, resolve_device
from hwprune.pipeline.checks import TRUST, FieldTypeError, check_config


def option(default, help: str, flag: str | None = None, metavar: str | None = None):
    """A config field with its command-line flag (default: --field-name) and help text."""
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar})


@dataclass
class MethodConfig:
    """What is removed (granularity), by which score (criterion), chosen how (selection) and when (schedule)."""

    criterion: str | None = option(None, "importance criterion (default: l2, squared magnitude): {criteria}")
    criterion_params: dict | None = option(
        None, "a criterion parameter, e.g. lambda=0.5 for redundancy (repeatable)", "--criterion-param", "KEY=VALUE"
    )
    granularity: str = option(
        "channel",
        "what is removed: channel, head, block (physically removed); unstructured, N:M (e.g. 2:4), "
        "block-sparse (e.g. block4x1, block8x8) (weights masked, saved compressed)",
    )
    selection: str = option(
        "budget", "which units go: {selections} (default budget, the hardware allocator; --sparsity implies ratio)"
    )
    sparsity: float | None = option(None, "fraction of units (of weights at weight level) to remove")
    scope: str = option("layer", "ratio per layer (layer) or over the whole model (global)")
    threshold: float | None = option(None, "score threshold (threshold, threshold-decay)")
    decay: float = option(0.5, "threshold-decay: factor per round")
    schedule: str = option("one-shot", "when units go: {schedules}")
    rounds: int = option(3, "rounds of iterative / gradual / threshold-decay")


@dataclass
class LoopConfig:
    """The hardware allocator (`selection: budget`) and the closed loop that measures its plans."""

    allocator: str = option("hw", "hw (measured-latency knapsack), uniform (one ratio), global (one threshold)")
    value: str = option(
        "auto", "what hw maximises: sensitivity (measured loss rise per group width; default with data) or scores"
    )
    trust: float | None = option(
        None,
        "hw keeps each group's width within [T, 1/T] x the uniform plan's at the same budget "
        f"(default {TRUST} when fine-tuning, else 0: anywhere; 1 is the uniform plan)",
    )
    min_keep: float = option(0.1, "never keep less than this fraction of a group")
    ignore: str | None = option(
        None,
        "comma-separated module names or patterns (fnmatch) to leave dense: every group touching one keeps its "
        "width (e.g. model.embed_tokens keeps a transformer's hidden size)",
    )
    max_iters: int = option(8, "closed-loop iterations (allocate, measure, correct)")
    calib_batches: int = option(8, "calibration batches (scores, BatchNorm statistics, loss probes)")


@dataclass
class FinetuneConfig:
    """Recovery training after pruning (`finetune.trainer`): distillation from the dense model (Hinton et al.
    2015), optionally on named features too; checkpoints a killed run resumes from (`--resume DIR`).

    Mirrors `finetune.trainer.TrainConfig` field by field (the finetune stage may not import the pipeline's
    config); `train_config` converts, and a value the trainer refuses is refused here, naming its flag.
    """

    epochs: int = option(0, "epochs of fine-tuning with distillation (needs data)", "--finetune-epochs")
    steps: int | None = option(None, "optimizer steps of fine-tuning in all (overrides the epochs)", "--finetune-steps")
    lr: float = option(1e-3, "fine-tuning learning rate (the peak of the schedule)")
    batch_size: int = option(
        128, "fine-tuning batch size, over all processes under torchrun (built-in data sets)", "--finetune-batch-size"
    )
    optimizer: str = option("adamw", "fine-tuning optimizer: adamw or sgd (momentum 0.9)")
    weight_decay: float = option(1e-4, "fine-tuning weight decay")
    lr_schedule: str = option(
        "one-cycle", "learning-rate schedule: one-cycle, cosine, step (/10 at 50%% and 75%%), constant"
    )
    warmup_steps: int = option(0, "steps of linear learning-rate warm-up (one-cycle: its rising part; default 30%%)")
    accumulate: int = option(1, "batches whose gradients are summed into one optimizer step")
    clip_grad_norm: float | None = option(None, "clip the gradient norm to this value (default: no clipping)")
    eval_every: int = option(0, "evaluate the metric every N steps (0: at each epoch's end)")
    keep_best: bool = option(False, "end fine-tuning with the weights of the best evaluation")
    patience: int = option(0, "stop fine-tuning after N evaluations without improvement (0: never)")
    kd_temperature: float = option(4.0, "distillation temperature (Hinton et al. 2015)")
    kd_alpha: float = option(0.5, "weight of the label loss against distillation (0: distillation only)")
    kd_features: str | None = option(
        None,
        "comma-separated module names whose outputs are distilled from the dense model's too (FitNets; a learned "
        "linear adapter where pruning narrowed them)",
        metavar="NAMES",
    )
    kd_feature_weight: float = option(1.0, "weight of the feature-distillation loss")
    precision: str = option(
        "fp32", "fine-tuning precision: fp32, bf16 (autocast, CPU or CUDA), fp16 (CUDA, GradScaler)"
    )
    device: str = option(
        "auto", "where fine-tuning runs: auto (CUDA when torch sees a GPU), cpu, cuda", "--finetune-device"
    )
    checkpoint_every: int = option(0, "checkpoint fine-tuning every N steps too (always at each epoch's end)")
    checkpoint_dir: str | None = option(
        None,
        "where fine-tuning checkpoints go (default with --out: OUT.ckpt, removed once OUT is written); "
        "`--resume DIR` continues a killed run from it",
    )

    def train_config(self, seed: int = 0) -> TrainConfig:
        """This section as the trainer's config; a value it refuses raises HwpruneError naming the flag."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "checkpoint_dir"}
        values["kd_features"] = feature_names(self.kd_features)
        try:
            return TrainConfig(**values, seed=seed)
        except TrainConfigError as e:
            raise HwpruneError(f"{e} ({flag_of(self, e.field)})") from None

    def check_here(self, model, seed: int = 0) -> None:
        """What only this machine and this model can tell, before pruning: a GPU for fp16 or `device: cuda`,
        and a module of the model for each `kd_features` name (HwpruneError naming the flag)."""
        try:
            resolve_device(self.train_config(seed))
            check_features(model, feature_names(self.kd_features))
        except TrainConfigError as e:
            raise HwpruneError(f"{e} ({flag_of(self, e.field)})") from None


def feature_names(text: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


def flag_of(section, name: str) -> str:
    meta = next((f.metadata for f in dataclasses.fields(section) if f.name == name), {})
    return meta.get("flag") or "--" + name.replace("_", "-")


@dataclass
class TargetConfig:
    """Where latency is measured (or simulated), and the latency table it reads."""

    name: str = option("cpu", "where latency is measured: `hwprune targets` lists them", "--target")
    threads: int | None = option(None, "intra-op threads (default: physical cores)")
    cache: str | None = option(None, "latency table file (default: ~/.cache/hwprune/latency.sqlite)")


SECTIONS = {"method": MethodConfig, "loop": LoopConfig, "finetune": FinetuneConfig, "target": TargetConfig}


@dataclass
class PruneConfig:
    """A whole run's settings. Validated on construction: a bad value raises HwpruneError naming its flag."""

    budget: str | None = option(
        None,
        "what the pruned model must fit, comma-separated, all enforced: latency=0.5 (fraction of dense) or "
        "latency=12ms; memory=8MB (weights + peak activation); energy=2mJ (simulated targets); params=1.5M; "
        "macs=300M; memory/energy/params/macs also as a fraction of dense (memory=0.5); causal language models: "
        "prefill=0.6 or decode=0.7 (one token with the KV cache), the other regime measured too. Default latency=0.5 "
        "with selection budget; with other selections a budget is only checked and reported",
    )
    seed: int = option(0, "random seed")
    method: MethodConfig = field(default_factory=MethodConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    target: TargetConfig = field(default_factory=TargetConfig)

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            if isinstance(getattr(self, name), dict):
                setattr(self, name, _section(cls, getattr(self, name), name))
        check_config(self)
        self.finetune.train_config(self.seed)  # the trainer's own checks (optimizer, schedule, precision, ...)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> PruneConfig:
        """From nested sections and/or flat option names (`finetune-epochs`, `criterion`, `target`, ...)."""
        if not isinstance(values, dict):
            raise HwpruneError(f"{where}: expected a mapping of options, got {type(values).__name__}")
        nested: dict = {name: {} for name in SECTIONS}
        top: dict = {}
        flat = flat_fields()
        for key, value in values.items():
            k = str(key).replace("-", "_")
            if k in SECTIONS and (isinstance(value, dict) or dataclasses.is_dataclass(value)):
                nested[k].update(value if isinstance(value, dict) else dataclasses.asdict(value))
            elif k in SECTIONS and k not in flat:  # `target` is a section and also the flat --target
                raise HwpruneError(f"{where}: '{key}' must be a mapping of its options, got {value!r}")
            elif k in flat:
                section, name = flat[k]
                (top if section is None else nested[section])[name] = value
            else:
                known = ", ".join(sorted(n.replace("_", "-") for n in flat))
                raise HwpruneError(f"{where}: unknown option '{key}'; options are: {known}")
        try:
            return cls(**top, **{name: _section(SECTIONS[name], v, name) for name, v in nested.items()})
        except FieldTypeError as e:
            raise HwpruneError(f"{where}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> PruneConfig:
        return cls.from_dict(read_yaml(path), where=str(path))


def _section(cls, values: dict, name: str):
    if isinstance(values, cls):
        return values
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in values if str(k).replace("-", "_") not in known]
    if unknown:
        raise FieldTypeError(f"unknown {name} option '{unknown[0]}'; use {', '.join(sorted(known))}")
    return cls(**{str(k).replace("-", "_"): v for k, v in values.items()})


def read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise HwpruneError(f"{path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise HwpruneError(f"{path}: not a text file (a YAML recipe is UTF-8 text: criterion: taylor, ...)") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise HwpruneError(f"{path}: not valid YAML{at} ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        got = "empty" if data is None else f"a {type(data).__name__}"
        raise HwpruneError(f"{path}: the recipe is {got}; expected a mapping of options (criterion: taylor, ...)")
    return data


@dataclass(frozen=True)
class Option:
    """One command-line option derived from a config field."""

    section: str | None  # None: a field of PruneConfig itself
    name: str
    flag: str
    type: type
    default: object
    help: str
    metavar: str | None


def options() -> list[Option]:
    """Every config field as a command-line option, in declaration order."""
    out = []
    for section, cls in [(None, PruneConfig), *SECTIONS.items()]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                continue
            kinds = [t for t in typing.get_args(hints[f.name]) if t is not type(None)] or [hints[f.name]]
            out.append(
                Option(
                    section,
                    f.name,
                    f.metadata["flag"] or "--" + f.name.replace("_", "-"),
                    kinds[0],
                    f.default,
                    f.metadata["help"],
                    f.metadata["metavar"],
                )
            )
    return out


def flat_fields() -> dict[str, tuple[str | None, str]]:
    """Flat option name (the flag without dashes, `_` for `-`) -> (section, field)."""
    out = {}
    for o in options():
        out[o.flag.lstrip("-").replace("-", "_")] = (o.section, o.name)
        if o.type is dict:  # criterion_params: a recipe writes the mapping under the field's own name
            out.setdefault(o.name, (o.section, o.name))
    return out
