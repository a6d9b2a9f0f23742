"""Stage 5: structural surgery. Channels a plan drops are physically removed (Torch-Pruning does the cut)."""

from __future__ import annotations

import copy

import torch.nn as nn
import torch_pruning as tp

from .errors import HwpruneError
from .plan import Plan


def apply_plan(model: nn.Module, example_inputs, plan: Plan, inplace: bool = False) -> nn.Module:
    """Return `model` with every group narrowed to the plan's kept channels."""
    if not inplace:
        model = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    modules = dict(model.named_modules())
    for gp in plan.groups:
        if gp.width == gp.size:
            continue
        root = modules.get(gp.id)
        if root is None:
            raise HwpruneError(f"plan names layer '{gp.id}', which this model does not have")
        pruner = graph.get_pruner_of_module(root)
        if pruner.get_out_channels(root) != gp.size:
            raise HwpruneError(f"plan expects {gp.size} channels in '{gp.id}', the model has {pruner.get_out_channels(root)}")
        keep = set(gp.keep)
        drop = [i for i in range(gp.size) if i not in keep]
        group = graph.get_pruning_group(root, pruner.prune_out_channels, drop)
        group.prune()
    return model
