"""Runs named by strings (the CLI, recipes, benchmarks): specs resolved into objects, then the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

from hwprune.cli.outputs import resolve_checked
from hwprune.pipeline.api import PruneResult, prune
from hwprune.pipeline.config import PruneConfig, flat_fields, read_yaml
from hwprune.zoo.userdata import resolve_callable, resolve_data

#: Recipe keys that name the run's inputs rather than settings (resolved by `zoo.specs` / `zoo.datasets`).
INPUT_KEYS = ("model", "data", "batch_size", "input_shape", "seq_len", "out", "loss", "metric")


@dataclass
class Recipe:
    """A recipe file: the run's inputs (model spec, data set name, batch size, ...) and its PruneConfig."""

    inputs: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def split_options(values: dict) -> Recipe:
    """Inputs (model, data, ...) apart from config options; budget and criterion-params mappings flattened."""
    out = Recipe()
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if k in INPUT_KEYS:
            out.inputs[k] = value
        elif k == "budget" and isinstance(value, dict):  # budget: {latency: 0.5, memory: 8MB}
            out.config["budget"] = ",".join(f"{n}={v}" for n, v in value.items())
        elif k == "budget" and isinstance(value, (int, float)) and not isinstance(value, bool):  # budget: 0.5
            out.config["budget"] = str(value)
        else:
            out.config[k] = value
    return out


def read_recipe(path: str) -> Recipe:
    return split_options(read_yaml(path))


def prune_spec(
    model: str,
    data: str | None = None,
    batch_size: int = 1,
    input_shape: str | None = None,
    config: PruneConfig | dict | None = None,
    progress: bool = True,
    loss: str | None = None,
    metric: str | None = None,
    seq_len: int | None = None,
    resume: str | None = None,
) -> PruneResult:
    """`hwprune prune`: the model spec, data, loss and metric specs resolved (`zoo`), then `hwprune.prune`.

    `config` may be a PruneConfig or a dict of nested sections and/or flat option names
    (`{"budget": "latency=0.5", "target": "cpu-ort", "finetune-epochs": 2}`). `resume`: the checkpoint
    directory of a killed run of the same settings (`hwprune.prune`).
    """
    cfg = config if isinstance(config, PruneConfig) else PruneConfig.from_dict(config or {})
    loss_fn, metric_fn = resolve_callable(loss, "--loss"), resolve_callable(metric, "--metric")
    resolved = resolve_checked(model, batch_size, input_shape, progress, seq_len)
    example = resolved.example_inputs
    return prune(
        resolved.model,
        example,
        config=cfg,
        data=resolve_data(data, example, resolved.tokenizer, resolved.model),
        loss_fn=loss_fn,
        metric=metric_fn,
        progress=progress,
        model_name=model,
        source=resolved.source,
        resume=resume,
    )


def run_options(options: dict, progress: bool = True) -> PruneResult:
    """A run from one flat mapping, as a recipe writes it: inputs (model, data, batch_size, input_shape) and
    config options (`{"model": "torchvision:resnet18", "budget": "latency=0.5", "target": "cpu-ort"}`)."""
    r = split_options(options)
    r.inputs.pop("out", None)
    return prune_spec(r.inputs.pop("model"), config=r.config, progress=progress, **r.inputs)


__all__ = ["Recipe", "flat_fields", "prune_spec", "read_recipe", "run_options", "split_options"]
