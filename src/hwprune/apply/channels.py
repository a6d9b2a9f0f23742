"""Stage 5: structural surgery. Channels a plan drops are physically removed (Torch-Pruning does the cut)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch_pruning as tp

from hwprune.core.errors import HwpruneError
from hwprune.groups.attention import cut_heads, find_attention
from hwprune.groups.trace import dependency_graph
from hwprune.plan.plan import Plan


def check_plan_fits(plan: Plan, graph: tp.DependencyGraph, modules: dict[str, nn.Module]) -> None:
    """Every group of the plan names a layer of this model with the plan's channel count; checked before any
    cut, so a plan made for another model fails in one line naming its first mismatching group and leaves
    the model (also an `inplace=True` one) untouched."""
    for gp in plan.groups:
        root = modules.get(gp.id)
        if root is None:
            raise HwpruneError(f"plan group '{gp.id}' names a layer this model lacks: is the plan for another model?")
        pruner = graph.get_pruner_of_module(root)
        if pruner is None:
            raise HwpruneError(f"plan group '{gp.id}' names a {type(root).__name__}, which has no prunable channels")
        have = pruner.get_out_channels(root)
        if have != gp.size:
            raise HwpruneError(
                f"plan group '{gp.id}' expects {gp.size} channels, this model's layer has {have}: "
                "is the plan for another model?"
            )


def apply_plan(model: nn.Module, example_inputs, plan: Plan, inplace: bool = False) -> nn.Module:
    """Return `model` with every group narrowed to the plan's kept channels."""
    if not inplace:
        model = copy.deepcopy(model)
    graph = dependency_graph(model, example_inputs)
    modules = dict(model.named_modules())
    check_plan_fits(plan, graph, modules)
    heads = find_attention(model)
    for gp in plan.groups:
        if gp.width == gp.size:
            continue
        keep = set(gp.keep)
        drop = [i for i in range(gp.size) if i not in keep]
        if gp.id in heads:
            _check_whole_heads(gp.id, drop, heads[gp.id].unit)
            cut_heads(model, heads[gp.id], drop)
            continue
        root = modules[gp.id]
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, drop)
        _check_no_layer_emptied(graph, group, gp.id, {m: n for n, m in modules.items()})
        group.prune()
    return model


def _check_whole_heads(gid: str, drop: list[int], unit: int) -> None:
    """An attention's channels come off in whole heads (with their KV share): a plan that keeps part of one
    would leave a reshape to heads that fails later with no name."""
    blocks = {c // unit for c in drop}
    if len(drop) != len(blocks) * unit:
        raise HwpruneError(
            f"plan for attention '{gid}' removes part of a head: keep or drop whole blocks of {unit} channels"
        )


def _check_no_layer_emptied(graph: tp.DependencyGraph, group, gid: str, names: dict) -> None:
    """A group can span the outputs of several layers (a concat feeding a depthwise conv ties all their
    channels): a plan that drops every channel of one of them leaves it with no output, and the forward pass
    fails later with a shape error that names no plan."""
    for dep, idxs in group:
        mod = dep.target.module
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and graph.is_out_channel_pruning_fn(
            dep.handler
        ):
            n = graph.get_pruner_of_module(mod).get_out_channels(mod)
            if len(set(idxs)) >= n:
                raise HwpruneError(
                    f"plan for group '{gid}' keeps none of the {n} output channels of layer '{names.get(mod, mod)}'; "
                    "keep at least one channel of every layer in the group"
                )


def recalibrate_bn(model: nn.Module, batches: list, forward=None) -> nn.Module:
    """Re-estimate BatchNorm running statistics of a pruned model on calibration batches.

    Removing channels shifts the distribution every later BN sees; stale statistics alone can take a
    pruned network to chance accuracy (Li et al., "EagleEye", ECCV 2020, call this adaptive BN). Cheap:
    forward passes only, no gradients. Cumulative averages (momentum=None) over all batches.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or not batches:
        return model
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            (forward or (lambda mm, xx: mm(xx)))(model, x)
    for m, mom in saved:
        m.momentum = mom
    model.train(was)
    return model
