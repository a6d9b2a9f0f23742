"""hwprune: prune PyTorch models to a budget measured on the target hardware.

The public API, objects in and objects out::

    result = hwprune.prune(model, example_inputs, budget="latency=0.5", target="cpu", data=loader, finetune=2)
    result.save("out/")                       # model/ (spec + safetensors), plan.json, report.json, report.md
    pruned = hwprune.load("out/model", model=MyNet())

Saving refuses a path that holds anything unless `overwrite=True`. Loading reads JSON and safetensors only:
a model built by the user's `file.py:function` is rebuilt from the copy of that file stored in the saved
directory only with `hwprune.load(dir, trust_code=True)`, since importing a file runs it.

The stages are verbs too: `find_groups`, `score`, `get_target`, `build_table`, `allocate`, `apply_plan`,
`finetune`, `measure`, `save`, `load`. Names resolve on first use (PEP 562), so `import hwprune` stays cheap
and never touches CUDA.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hwprune")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

#: Public name -> "module:attribute" it lives at.
_API = {
    "prune": "hwprune.pipeline.api:prune",
    "PruneResult": "hwprune.pipeline.api:PruneResult",
    "Report": "hwprune.report.schema:Report",
    "PruneConfig": "hwprune.pipeline.config:PruneConfig",
    "MethodConfig": "hwprune.pipeline.config:MethodConfig",
    "LoopConfig": "hwprune.pipeline.config:LoopConfig",
    "FinetuneConfig": "hwprune.pipeline.config:FinetuneConfig",
    "TargetConfig": "hwprune.pipeline.config:TargetConfig",
    "Budget": "hwprune.core.budget:Budget",
    "parse_budgets": "hwprune.core.budget:parse_budgets",
    "HwpruneError": "hwprune.core.errors:HwpruneError",
    "Registry": "hwprune.core.registry:Registry",
    "LoaderData": "hwprune.core.data:LoaderData",
    "Target": "hwprune.hardware.base:Target",
    "get_target": "hwprune.hardware.targets:get_target",
    "find_groups": "hwprune.groups.analysis:analyze",
    "score": "hwprune.importance:compute_scores",
    "build_table": "hwprune.pipeline.verbs:build_table",
    "allocate": "hwprune.pipeline.verbs:allocate",
    "apply_plan": "hwprune.apply.channels:apply_plan",
    "Plan": "hwprune.plan.plan:Plan",
    "finetune": "hwprune.pipeline.verbs:finetune",
    "evaluate": "hwprune.evaluate.metrics:evaluate",
    "measure": "hwprune.pipeline.verbs:measure",
    "save": "hwprune.export.model:save_model",
    "load": "hwprune.zoo.specs:load_saved",
}


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'hwprune' has no attribute '{name}'")
    module, attr = _API[name].split(":")
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
