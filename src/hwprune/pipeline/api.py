"""`hwprune.prune`: the user's model, inputs and data in; the pruned model, its plan and its report out.

One pipeline for every method: set-up and checks (here), the method chosen from `context.METHODS` by the
config (budget, units, weights, hierarchical), fine-tuning, the final measurement (`figures`) and the report.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import hwprune.pipeline.budget  # noqa: F401  (registers the budget method)
from hwprune.core.budget import Budget, parse_budgets
from hwprune.core.data import as_data, check_targets
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call, default_loss, primary_output
from hwprune.cost.resources import FigureTarget, count
from hwprune.evaluate.metrics import Metric, evaluate
from hwprune.export.model import object_source
from hwprune.finetune import distributed
from hwprune.finetune.trainer import FitResult, TrainConfig, fit, resolve_device, to_device
from hwprune.hardware.base import Target
from hwprune.hardware.targets import get_target
from hwprune.pipeline import regimes
from hwprune.pipeline import resume as resume_stage
from hwprune.pipeline.checks import check_data, check_outputs, check_weights, fit_error
from hwprune.pipeline.config import FinetuneConfig, MethodConfig, PruneConfig
from hwprune.pipeline.context import METHODS, Outcome, Run
from hwprune.pipeline.deploy import deploy
from hwprune.pipeline.figures import final_figures
from hwprune.pipeline.language import batch_perplexity, is_causal_lm
from hwprune.pipeline.methods import method_kind, weight_sparsity
from hwprune.report.files import write_outputs
from hwprune.report.schema import Report, Training


@dataclass
class PruneResult:
    """The pruned model, the dense model it came from, the plan (plain data) and the report."""

    model: nn.Module
    dense: nn.Module
    plan: object  # plan.Plan for the budget method, methods.MethodRecord for the others
    #: None on the ranks other than 0 under torchrun: only rank 0 measures and reports.
    report: Report | None
    #: How to rebuild the architecture when loading (`{"kind": "torchvision", "name": ...}`); a model passed
    #: in as an object records its class, and `hwprune.load(dir, model=MyNet())` rebuilds it.
    source: dict = field(default_factory=dict)
    #: Deployable files written next to model/ (an int8 target: model.int8.onnx), by name.
    files: dict[str, bytes] = field(default_factory=dict, repr=False)

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """model/ (spec.json + safetensors), plan.json, report.json, report.md and `files`, written atomically.

        A path that holds anything is refused; an earlier hwprune output there is replaced with `overwrite=True`.
        """
        return write_outputs(directory, self, overwrite=overwrite)


def _as_config(config, budget, method, finetune, seed, target=None) -> PruneConfig:
    """One PruneConfig from `config` and the keyword arguments that override it."""
    if isinstance(config, PruneConfig) and all(v is None for v in (budget, method, finetune, seed, target)):
        return config
    if config is not None and not isinstance(config, (PruneConfig, dict)):
        raise HwpruneError(f"config of type {type(config).__name__}: pass a PruneConfig or a dict")
    values = config.to_dict() if isinstance(config, PruneConfig) else dict(config or {})
    if budget is not None:
        values["budget"] = _budget_text(budget)
    if method is not None:
        values["method"] = {**values.get("method", {}), **_plain(method)}
    if finetune is not None:
        ft = {"epochs": finetune} if isinstance(finetune, int) else _plain(finetune, "finetune")
        values["finetune"] = {**values.get("finetune", {}), **ft}
    if seed is not None:
        values["seed"] = seed
    if isinstance(target, str):
        values["target"] = {**values.get("target", {}), "name": target}
    elif target is not None and not isinstance(target, Target):
        raise HwpruneError(f"target of type {type(target).__name__}: pass a name (`hwprune targets`) or a Target")
    return PruneConfig.from_dict(values, where="hwprune.prune")


def _budget_text(budget) -> str:
    """`budget=` as the parser reads it: a string, a bare fraction (0.5), or a list of strings / Budgets."""
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        return str(budget)
    if isinstance(budget, (list, tuple)) and all(isinstance(b, (str, Budget)) for b in budget):
        return ",".join(b if isinstance(b, str) else b.text for b in budget)
    if not isinstance(budget, str):
        raise HwpruneError(f"budget={budget!r}: pass a string such as 'latency=0.5,memory=8MB' (or a list of them)")
    return budget


def _plain(section, name: str = "method") -> dict:
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)
    if not isinstance(section, dict):
        raise HwpruneError(f"{name}={section!r}: pass a {name.capitalize()}Config or a dict of its fields")
    return dict(section)


def _check_fits(dense: nn.Module, example, data, loss_fn) -> int | None:
    """The model's weights are finite, it runs on its example inputs and on the data's inputs to finite
    outputs, and the data's targets fit its outputs (a one-line error otherwise). Returns the width of its
    output on the data (the class count of a classifier), None without data."""
    check_weights(dense)
    dense.eval()
    with torch.no_grad():
        try:
            check_outputs(call(dense, example), "the example inputs")
        except HwpruneError:
            raise
        except Exception as e:
            raise fit_error(dense, example, e, "example inputs") from None
        if data is None:
            return None
        inputs, targets = data.sample_batch()
        try:
            out = call(dense, inputs)
        except Exception as e:
            shape = getattr(data, "sample_shape", None)
            raise fit_error(dense, inputs, e, f"the data's inputs{f' (samples of {shape})' if shape else ''}") from None
        check_outputs(out, "the data's inputs")
        out = primary_output(out)  # a transformers ModelOutput, a segmentation dict, a tuple: its logits
    classes = getattr(data, "num_classes", None)
    if classes and isinstance(out, torch.Tensor) and out.shape[-1] != classes:
        raise HwpruneError(f"model outputs {out.shape[-1]} classes, the data set has {classes}")
    check_targets(out, targets, data.label_range(), default_loss=loss_fn is None)
    return out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() > 0 else None


def _setup(model, example_inputs, cfg: PruneConfig, target, data, loss_fn, metric, progress) -> Run:
    if not isinstance(model, nn.Module):
        raise HwpruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    data = as_data(data)
    check_data(cfg, data)
    loss_fn = loss_fn or getattr(data, "loss_fn", None)  # what the data's targets call for (embeddings: cosine)
    metric = metric or getattr(data, "metric", None)
    classes = _check_fits(model, example_inputs, data, loss_fn)
    # Cross-entropy over the right dimension: a transformers model's classes are last ((batch, tokens, vocab) for
    # a language model), F.cross_entropy's are dim 1, which would read a language model's tokens as classes.
    loss_fn = loss_fn or default_loss(model)
    if not isinstance(target, Target):
        target = get_target(cfg.target.name, threads=cfg.target.threads)
    budgets: list[Budget] = parse_budgets(cfg.budget) if cfg.budget else []
    if any(b.kind == "energy" for b in budgets):
        FigureTarget("energy", target)  # fails early, in one line, when the target has no energy model
    if _fine_tunes(cfg) and data is not None:
        cfg.finetune.check_here(model, cfg.seed)  # fp16 without a GPU, a feature name that is no module
    criterion = cfg.method.criterion or DEFAULT_CRITERION
    regime = regimes.budgeted_regime(budgets)
    prompt = example_inputs
    target, example_inputs = regimes.setup(model, example_inputs, target, regime)
    return Run(
        cfg,
        model,
        example_inputs,
        target,
        budgets,
        data,
        loss_fn,
        metric,
        progress,
        criterion,
        classes=classes,
        regime=regime,
        prompt=prompt,
    )


#: Which channels go when none is named: squared magnitude (Torch-Pruning's default too). It was Taylor
#: (with data): on the peers benchmark (benchmarks/results/peers.md, 3 seeds, 1 epoch of KD recovery) hw
#: plans with l2 channels beat the same allocator with Taylor channels one-shot and after fine-tuning:
#: MNIST-1D at 0.3 of dense latency 50.8% / 98.17% against 29.3% / 96.10%, digits at 0.3 84.7% / 95.74%
#: against 52.7% / 94.63%. Taylor on 8 calibration batches ranks channels by one noisy gradient sample.
DEFAULT_CRITERION = "l2"


def _fine_tunes(cfg: PruneConfig) -> bool:
    return cfg.finetune.epochs > 0 or bool(cfg.finetune.steps)


def _finetune(run: Run, out: Outcome, checkpoints: Path | None, resume: bool) -> Training | None:
    """Recovery training (`finetune.trainer.fit`), distilling from the dense model; its report section."""
    ft = run.cfg.finetune
    if out.finetuned or run.data is None or not _fine_tunes(run.cfg):
        return None
    tcfg = ft.train_config(run.cfg.seed)
    if not ft.epochs:  # steps only: the trainer passes over the data as often as they need
        tcfg = TrainConfig(**{**tcfg.to_dict(), "epochs": 1})
    res = fit(
        out.model,
        run.data,
        tcfg,
        teacher=run.dense,
        loss_fn=run.loss_fn,
        evaluate=_scorer(run),
        checkpoint_dir=checkpoints,
        resume=resume,
        progress=run.progress,
        desc="fine-tuning (KD)",
    )
    return _training(tcfg, res, checkpoints if resume else None)


def _scorer(run: Run):
    """The run's metric on its validation batches, moved to wherever the model is being trained."""

    def score(model: nn.Module) -> float | None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        batches = ((to_device(x, device), to_device(y, device)) for x, y in run.data.validation())
        return evaluate(model, batches, run.metric)

    return score


def _training(tcfg: TrainConfig, res: FitResult, resumed_from: Path | None) -> Training:
    return Training(
        epochs=res.epochs,
        steps=res.steps,
        optimizer=tcfg.optimizer,
        schedule=tcfg.lr_schedule,
        precision=tcfg.precision,
        processes=res.processes,
        batch_size=tcfg.batch_size,
        samples_per_s=res.samples_per_s,
        seconds_per_epoch=res.seconds_per_epoch,
        best_step=res.best_step if tcfg.keep_best else None,
        best_metric=res.best_metric if tcfg.keep_best else None,
        stopped_early_at=res.stopped_early_at,
        resumed_from=str(resumed_from) if resumed_from is not None and res.resumed_at is not None else None,
    )


def _prune_or_resume(run: Run, kind: str, checkpoints: Path | None, resume: bool) -> Outcome:
    """The method's Outcome: read back from a resumed run's checkpoint directory, or pruned here (rank 0 only
    under torchrun, which then sends the pruned model to the other ranks)."""
    world = distributed.world()
    if resume:
        stage = resume_stage.load_stage(checkpoints, run)
        if stage is not None:
            if stage[0] != kind:
                raise HwpruneError(f"--resume {checkpoints}: its run pruned by the {stage[0]} method, this one {kind}")
            run.log(f"resumed {checkpoints}: the pruned model and its plan are read back, not pruned again")
            return stage[1]
    out = None
    try:
        if world.main:
            out = METHODS.get(kind)(run)
            if checkpoints is not None and _fine_tunes(run.cfg) and not out.finetuned:
                resume_stage.save_stage(checkpoints, kind, out, run)
    finally:
        if world.distributed:  # rank 0 sends b"" when it failed: the others stop instead of waiting
            ok = out is not None and world.main
            blob = (b"F" if out.finetuned else b"T") + resume_stage.pack_model(out.model) if ok else b""
            blob = distributed.broadcast_bytes(blob, _device_type(run))
            if not world.main:
                if not blob:
                    raise HwpruneError("rank 0 failed before fine-tuning (its error is in its output)")
                model = resume_stage.unpack_model(blob[1:], run.dense)
                out = Outcome(model, None, finetuned=blob[:1] == b"F")
    return out


def _device_type(run: Run) -> str:
    if not _fine_tunes(run.cfg) or run.data is None:
        return "cpu"
    return resolve_device(run.cfg.finetune.train_config(run.cfg.seed)).type


#: A dense model whose top-1 accuracy is below this many times chance (1 / classes) is most likely fed data
#: it was not trained on: a user's CNN evaluated on a built-in set normalised differently read 10.56% on
#: 10 classes.
CHANCE_FACTOR = 1.5


def _near_chance(run: Run, accuracy: float | None) -> str | None:
    """A warning when the dense model's default accuracy is near chance on the run's data."""
    classes = run.classes
    if accuracy is None or run.metric is not None or not classes:
        return None
    if classes < 2 or accuracy > CHANCE_FACTOR / classes:
        return None
    return (
        f"the dense model scores {accuracy:.1%} on this data, near chance for {classes} classes "
        f"({1 / classes:.1%}): is the data prepared (normalised, labelled) as the model was trained?"
    )


def _report(run: Run, kind: str, out: Outcome, figures: dict, model_name: str | None) -> Report:
    s = out.sections
    predicted = s.get("predicted_s")
    final_s = figures["measured_latency_ms"] / 1e3
    report = Report(
        model=model_name or type(run.dense).__name__,
        settings={**run.cfg.to_dict(), "criterion": run.criterion, "method_kind": kind, **s.get("settings", {})},
        **figures,
        predicted_latency_ms=predicted * 1e3 if predicted is not None else None,
        predicted_ratio=predicted / s["t_plan"] if predicted is not None else None,
        prediction_error=(predicted - final_s) / final_s if predicted is not None else None,
        latency_table=s.get("latency_table"),
        loop=s.get("loop", []),
        groups=s.get("groups", []),
        data=run.data.description if run.data is not None else None,
        notes=s.get("notes", []),
        stages=run.stages,
        machine=run.monitor.state(run.dense_medians),
    )
    chance = _near_chance(run, report.dense.accuracy)
    if chance:
        report.notes.append(chance)
    for w in report.machine.warnings + ([chance] if chance else []):
        print(f"hwprune: warning: {w}", file=sys.stderr)
    report.pruned.accuracy_oneshot = out.score_oneshot
    if kind != "budget":
        report.method = out.plan.to_dict()
        report.weight_sparsity = weight_sparsity(out.model)
    return report


def prune(
    model: nn.Module,
    example_inputs,
    *,
    budget: str | list[Budget] | None = None,
    target: str | Target | None = None,
    data=None,
    finetune: int | dict | FinetuneConfig | None = None,
    method: dict | MethodConfig | None = None,
    loss_fn: Callable | None = None,
    metric: Metric | None = None,
    config: PruneConfig | dict | None = None,
    seed: int | None = None,
    progress: bool = True,
    model_name: str | None = None,
    source: dict | None = None,
    resume: str | Path | None = None,
) -> PruneResult:
    """Prune `model` so that it meets `budget` on `target`; the dense model is left as it was.

    Args:
        model: the trained model (any nn.Module).
        example_inputs: one batch as the model is called at deployment: a tensor, a tuple (positional
            arguments) or a dict (keyword arguments). Latency is measured at its batch size.
        budget: e.g. "latency=0.5" (of dense), "latency=12ms", "memory=8MB,params=0.5"; default
            latency=0.5 for the budget method, none (only reported) for the others.
        target: a target name (`hwprune targets`) or a Target object; default the config's, `cpu`.
        data: a DataLoader or iterable of (inputs, targets) batches, a torch Dataset, or a (train,
            validation) pair of them; unlabelled batches fine-tune by distillation from the dense model.
        finetune: epochs, or a FinetuneConfig / dict (epochs, lr, batch_size, optimizer, precision, ...).
        method: a MethodConfig / dict (criterion, granularity, selection, sparsity, schedule, ...).
        loss_fn: loss(outputs, targets): the label term of fine-tuning, of gradient criteria (taylor, ...) and
            of the sensitivity probes (default cross-entropy).
        metric: metric(outputs, targets) -> batch mean (default top-1 accuracy).
        config: a whole PruneConfig (or its dict); the keyword arguments above override it.
        resume: a checkpoint directory of an earlier run of the same settings (its `finetune.checkpoint_dir`)
            that was killed: its pruned model and plan are read back and fine-tuning continues from its newest
            checkpoint. Fine-tuning checkpoints are written when `finetune.checkpoint_dir` is set.

    Under `torchrun --nproc_per_node N`, every process calls this: rank 0 prunes and sends the pruned model
    to the others, all of them fine-tune (DistributedDataParallel), and rank 0 alone measures and reports
    (the other ranks' results have `report=None`).
    """
    cfg = _as_config(config, budget, method, finetune, seed, target)
    checkpoints = Path(resume) if resume is not None else None
    if checkpoints is not None:  # the config is the caller's object: changed on a copy
        cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, checkpoint_dir=str(checkpoints)))
        resume_stage.check(checkpoints, cfg)  # missing, damaged or of other settings: refused before any work
    elif cfg.finetune.checkpoint_dir:
        checkpoints = Path(cfg.finetune.checkpoint_dir)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    t_start = time.perf_counter()
    run = _setup(model, example_inputs, cfg, target, data, loss_fn, metric, progress)
    distributed.setup(_device_type(run))
    world = distributed.world()
    if checkpoints is not None and resume is None and world.main and _fine_tunes(cfg):
        resume_stage.start(checkpoints, cfg)
    kind = method_kind(cfg)
    out = _prune_or_resume(run, kind, checkpoints, resume is not None)
    ppl_oneshot = _perplexity(run, out.model) if resume is None and not out.finetuned else None
    t0 = time.perf_counter()
    training = _finetune(run, out, checkpoints, resume is not None)
    run.stages["finetune_s"] = time.perf_counter() - t0
    if not world.main:  # rank 0 alone measures, reports and writes
        return PruneResult(out.model, run.dense, out.plan, None, source or object_source(model))
    report, files = _measure_and_report(run, kind, out, model_name, t_start)
    report.training = training
    report.dense.perplexity, report.pruned.perplexity = _perplexity(run, run.dense), _perplexity(run, out.model)
    report.pruned.perplexity_oneshot = ppl_oneshot
    return PruneResult(out.model, run.dense, out.plan, report, source or object_source(model), files)


def _perplexity(run: Run, model: nn.Module) -> float | None:
    """A causal LM's held-out perplexity per token on the run's validation batches (None for other models)."""
    if run.data is None or not is_causal_lm(run.dense):
        return None
    p = batch_perplexity(model, run.data.validation())
    return p.perplexity if p is not None else None


def _measure_and_report(run: Run, kind: str, out: Outcome, model_name: str | None, t_start: float):
    """The final measurement, the report and the deployable files of the pruned (and fine-tuned) model."""
    t0 = time.perf_counter()
    sections = out.sections
    if "t_plan" not in sections:
        sections["t_plan"] = run.target.time_models([run.dense], run.example)[0].median
    dense_figures = sections.get("dense_figures") or _dense_figures(run, sections["t_plan"])
    figures = final_figures(run, out.model, sections["t_plan"], dense_figures)
    figures["regimes"] = regimes.figures(run, out.model, figures)
    run.stages["evaluate_s"] = time.perf_counter() - t0
    run.stages["total_s"] = time.perf_counter() - t_start
    report = _report(run, kind, out, figures, model_name)
    if kind == "budget":
        out.plan.meta.update(measured_latency_ms=figures["measured_latency_ms"], fingerprint=report.fingerprint)
    t0 = time.perf_counter()
    deployed = deploy(run, out.model)
    files = {}
    if deployed is not None:
        report.deployment, files = deployed
        report.stages["deploy_s"] = time.perf_counter() - t0
    return report, files


def _dense_figures(run: Run, t_dense: float) -> dict:
    def figure(kind: str) -> float:
        return t_dense if kind == "latency" else count(kind, run.dense, run.example, run.target)

    return {b.kind: figure(b.kind) for b in run.budgets}
