"""Stage 1: coupled prunable groups, found by Torch-Pruning's dependency graph (DepGraph).

A *group* is a set of channels that must be removed together (a conv's filters, the BN after it, the
next conv's input channels, every layer tied to them by a residual add or a concat). Each group has a
list of candidate widths; the allocator picks one per group. A *layer* is one conv/linear whose
latency is looked up in the table: its input width belongs to one group, or is a concatenation of several
groups' outputs (DenseNet, Inception), or is fixed, and its output width belongs to another (or is fixed).
"""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import as_tuple, call, eval_mode, run_hooked
from hwprune.groups.attention import Attention, HeadGroup, cut_heads, find_attention
from hwprune.groups.trace import all_groups, dependency_graph, through_unmapped

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class LayerInfo:
    """One conv/linear layer as the cost model sees it."""

    name: str
    kind: str  # conv1d | conv2d | conv3d | linear
    in_channels: int
    out_channels: int
    input_shape: tuple[int, ...]  # as seen in the dense forward pass
    output_numel: int = 0  # elements of the dense output (sizes the width-dependent remainder)
    in_mult: int = 1  # input features per channel of the input group (a Linear after a flatten)
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    depthwise: bool = False
    bias: bool = True
    #: Convolution groups of a grouped (not depthwise) conv: its widths stay multiples of it.
    groups: int = 1
    in_group: str | None = None
    out_group: str | None = None
    #: Output channels per `out_div` channels of the output group (a key/value projection under
    #: grouped-query attention is 1/`per_kv` as wide as its query projection, the group's root).
    out_div: int = 1
    #: An input concatenated from several groups' outputs (or one group's and fixed channels): each part as
    #: (group id, its dense channels here, input channels per channel of the group); `in_group` is then None.
    #: Reading such an input as one group's width (times in_channels / its size) once predicted DenseNet-169's
    #: MACs up to 40x off, and a macs=0.5 plan ended at 0.03 of the limit.
    in_parts: tuple[tuple[str, int, int], ...] = ()

    @property
    def in_groups(self) -> tuple[str, ...]:
        """Every group the input width depends on."""
        if self.in_parts:
            return tuple(g for g, _, _ in self.in_parts)
        return (self.in_group,) if self.in_group is not None else ()

    def widths(self, widths: dict[str, int]) -> tuple[int, int]:
        """(input, output) channels of this layer when its groups take `widths` (others: dense)."""
        if self.in_parts:
            c_in = self.in_channels + sum(widths[g] * m - n for g, n, m in self.in_parts if g in widths)
        else:
            c_in = widths[self.in_group] * self.in_mult if self.in_group in widths else self.in_channels
        c_out = widths[self.out_group] // self.out_div if self.out_group in widths else self.out_channels
        return c_in, c_out

    def signature(self) -> str:
        """Everything but the two widths that the layer's latency depends on (the cache key)."""
        shape = list(self.input_shape)
        shape[1 if self.kind.startswith("conv") else -1] = -1  # the channel dim varies with the width
        return (
            f"{self.kind}|k={self.kernel_size}|s={self.stride}|p={self.padding}|d={self.dilation}"
            f"|dw={int(self.depthwise)}|bias={int(self.bias)}|x={tuple(shape)}"
            + (f"|g={self.groups}" if self.groups > 1 else "")  # ungrouped keys as before: caches stay valid
        )

    def build(self, c_in: int, c_out: int) -> tuple[nn.Module, torch.Tensor]:
        """A fresh layer at the given widths and an input of the right shape, for timing."""
        shape = list(self.input_shape)
        if self.kind == "linear":
            shape[-1] = c_in
            return nn.Linear(c_in, c_out, bias=self.bias), torch.randn(shape)
        shape[1] = c_in
        cls = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[self.kind]
        groups = c_in if self.depthwise else self.groups
        layer = cls(c_in, c_out, self.kernel_size, self.stride, self.padding, self.dilation, groups, self.bias)
        return layer, torch.randn(shape)


@dataclass
class PruneGroup:
    """Channels that are removed together; `candidates` are the widths the allocator may choose."""

    id: str  # name of the root layer whose output channels define the group
    size: int
    candidates: list[int]
    members: list[tuple[str, str]] = field(default_factory=list)  # (module name, "out" | "in")
    #: A grouped conv (groups=g) reads or writes these channels: widths are multiples of g, and the same
    #: channels are kept in each of the g conv groups (torch-pruning slices grouped convs that way).
    multiple: int = 1
    #: Channels kept or removed as one contiguous block (an attention head with its KV share); widths are
    #: multiples of it.
    unit: int = 1


def candidate_widths(size: int, min_keep: float = 0.1, max_candidates: int = 64, multiple: int = 1) -> list[int]:
    """Widths a group may take: multiples of a step, from `min_keep` of the group up to all of it.

    Steps are 8 channels for groups of 64 or more: the latency staircases measured on this project's CPU
    (DESIGN.md) have their edges on multiples of 8 or coarser, so finer widths buy nothing but search time.
    """
    if size <= 16:
        step = 1
    elif size < 64:
        step = 4
    else:
        step = 8
    while size / step > max_candidates:
        step *= 2
    step = step * multiple // math.gcd(step, multiple)
    lo = max(multiple, math.ceil(size * min_keep / multiple) * multiple)
    widths = [w for w in range(step, size, step) if w >= lo]
    if not widths or widths[0] > lo:
        widths.insert(0, lo)
    return sorted(set(widths + [size]))


@dataclass
class GroupAnalysis:
    """The result of stage 1: the dependency graph, the groups, and the layers the cost model times."""

    graph: tp.DependencyGraph
    groups: list[PruneGroup]
    layers: list[LayerInfo]
    output_layer: str
    tp_groups: dict = field(repr=False, default_factory=dict)  # group id -> torch-pruning Group (full indices)

    @property
    def multiples(self) -> dict[str, int]:
        """Group id -> the conv-group count its widths are multiples of (1: any width)."""
        return {g.id: g.multiple for g in self.groups}

    @property
    def units(self) -> dict[str, int]:
        """Group id -> the block of channels removed together (1: single channels)."""
        return {g.id: g.unit for g in self.groups}

    def group(self, gid: str) -> PruneGroup:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(gid)


def trial_cut(size: int, multiple: int, unit: int = 1) -> list[int]:
    """The channels a trial removes: the last one (the last block of `unit`), or the last of each of
    `multiple` conv groups."""
    if unit > 1:
        return list(range(size - unit, size))
    per = size // multiple
    return [(j + 1) * per - 1 for j in range(multiple)]


def cut_group(model: nn.Module, graph: tp.DependencyGraph, gid: str, drop: list[int], heads: dict) -> list:
    """Remove channels `drop` of group `gid` in place: an attention's heads (`heads`: query name ->
    Attention) by their four projections, any other group through the dependency graph. Returns the
    torch-pruning group that was cut ([] for heads)."""
    if gid in heads:
        cut_heads(model, heads[gid], drop)
        return []
    root = dict(model.named_modules())[gid]
    group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, drop)
    group.prune()
    return group


def _prunes_cleanly(model: nn.Module, example_inputs, gids: list[str], shapes: dict[str, tuple[int, int]]) -> bool:
    """Does the model still run after one channel (one per conv group, one head) is cut from each of `gids`
    (on a copy)? `shapes`: group id -> (conv groups, unit)."""
    trial = copy.deepcopy(model)
    try:
        graph = dependency_graph(trial, example_inputs)
        heads = find_attention(trial)
        modules = dict(trial.named_modules())
        for gid in gids:
            root = modules[gid]
            multiple, unit = shapes.get(gid, (1, 1))
            cut = trial_cut(graph.get_pruner_of_module(root).get_out_channels(root), multiple, unit)
            cut_group(trial, graph, gid, cut, heads)
        with torch.no_grad():
            call(trial, example_inputs)
        return True
    except Exception:
        return False


def unsafe_groups(model: nn.Module, example_inputs, gids: list[str], shapes: dict | None = None) -> set[str]:
    """Groups whose removal breaks the forward pass, found by cutting one channel on a copy.

    Some models read a width from a plain attribute instead of a layer (torchvision's ViT reshapes its
    patch embedding with `self.hidden_dim`, and its class token and position embedding are bare
    parameters), so the dependency graph cannot see that the residual stream is tied to them. One trial
    of all groups at once settles the usual case; when it fails, bisection finds the culprits.
    """
    shapes = shapes or {}
    if not gids or _prunes_cleanly(model, example_inputs, gids, shapes):
        return set()
    if len(gids) == 1:
        return set(gids)
    half = len(gids) // 2
    return unsafe_groups(model, example_inputs, gids[:half], shapes) | unsafe_groups(
        model, example_inputs, gids[half:], shapes
    )


def analyze(
    model: nn.Module,
    example_inputs,
    min_keep: float = 0.1,
    ignored: list[str] | None = None,
    probe: bool = True,
) -> GroupAnalysis:
    """Trace the model and return its prunable groups and timed layers.

    The last conv/linear that runs is the output layer (the classifier); its outputs are never pruned.
    Grouped (non-depthwise) convolutions are left alone, and so are groups whose removal breaks the
    forward pass (`unsafe_groups`; `probe=False` skips that check). The model is traced in eval mode, so
    BatchNorm statistics are not touched.
    """
    with eval_mode(model):
        return _analyze(model, example_inputs, min_keep, ignored, probe)


def _layer_info(m: nn.Module, name: str, shape: tuple[int, ...], output_numel: int) -> LayerInfo:
    """What the latency table needs to time a conv/linear alone: its kind, widths, input shape, geometry."""
    if isinstance(m, nn.Linear):
        info = LayerInfo(name, "linear", m.in_features, m.out_features, shape, bias=m.bias is not None)
    else:
        kind = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d"}[type(m)]
        info = LayerInfo(
            name,
            kind,
            m.in_channels,
            m.out_channels,
            shape,
            kernel_size=as_tuple(m.kernel_size),
            stride=as_tuple(m.stride),
            padding=as_tuple(m.padding),
            dilation=as_tuple(m.dilation),
            depthwise=m.groups > 1 and m.groups == m.in_channels == m.out_channels,
            bias=m.bias is not None,
            groups=m.groups if 1 < m.groups < m.in_channels else 1,
        )
    info.output_numel = output_numel
    return info


def _spans_several_layers(graph: tp.DependencyGraph, g, size: int) -> bool:
    """Does the group hold only part of some conv/linear's outputs (two convs concatenated into a depthwise
    conv)? Plans keep each group's best-scored channels, which may be none of one such layer's, leaving it
    with no output (apply_plan refuses that); such groups are left alone."""
    layers = [d.target.module for d, _ in g if graph.is_out_channel_pruning_fn(d.handler)]
    layers = [m for m in layers if isinstance(m, PRUNABLE_TYPES)]
    return any(graph.get_pruner_of_module(m).get_out_channels(m) < size for m in layers)


def _channel_group(g, graph: tp.DependencyGraph, names: dict, layers: dict, min_keep: float) -> PruneGroup | None:
    """The PruneGroup of one torch-pruning group (None when it cannot be narrowed); records on `layers`
    which of them read or write it."""
    root = g[0].dep.target.module
    gid = names[root]
    size = len(g[0].idxs)
    if size < 2 or _spans_several_layers(graph, g, size):
        return None
    members, multiple = [], 1
    for dep, idxs in g:
        mod = dep.target.module
        if not isinstance(mod, nn.Module) or mod not in names:
            continue
        side = "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in"
        members.append((names[mod], side))
        if isinstance(mod, nn.modules.conv._ConvNd) and 1 < mod.groups < mod.in_channels:
            multiple = math.lcm(multiple, mod.groups)
        if mod in layers:
            if side == "out" or layers[mod].depthwise:
                layers[mod].out_group = gid
            la = layers[mod]
            if side == "in" and not la.depthwise and len(idxs) < la.in_channels:
                # part of a concatenated input: the group's channels (times a flatten's) among others
                if gid not in la.in_groups:
                    la.in_parts = (*la.in_parts, (gid, len(idxs), max(len(idxs) // size, 1)))
            elif side == "in" or la.depthwise:
                la.in_group = gid
                if side == "in" and la.in_channels % size == 0:
                    la.in_mult = la.in_channels // size
    if size % multiple or size // multiple < 2:
        return None  # the group's width does not split evenly into the grouped conv's groups
    return PruneGroup(gid, size, candidate_widths(size, min_keep, multiple=multiple), members, multiple)


def _head_group(att: Attention, modules: dict, layers: dict, min_keep: float) -> PruneGroup:
    """The group of one attention's heads, rooted at its query projection; widths are whole KV units."""
    q, k, v, o = (modules[n] for n in (att.q, att.k, att.v, att.o))
    layers[q].out_group = layers[k].out_group = layers[v].out_group = att.q
    layers[k].out_div = layers[v].out_div = att.per_kv
    if o in layers:
        layers[o].in_group = att.q
    size = q.out_features
    members = [(att.q, "out"), (att.k, "out"), (att.v, "out"), (att.o, "in")]
    return PruneGroup(att.q, size, candidate_widths(size, min_keep, multiple=att.unit), members, unit=att.unit)


def _without(groups: list[PruneGroup], tp_groups: dict, layers: dict, ids: set[str]):
    """The groups and torch-pruning groups less `ids`; layers that read or wrote those keep their widths."""
    for la in layers.values():
        la.in_group = None if la.in_group in ids else la.in_group
        la.in_parts = tuple(p for p in la.in_parts if p[0] not in ids)
        la.out_group = None if la.out_group in ids else la.out_group
    return [g for g in groups if g.id not in ids], {k: v for k, v in tp_groups.items() if k not in ids}


def _analyze(model, example_inputs, min_keep, ignored, probe) -> GroupAnalysis:
    names = {m: n for n, m in model.named_modules()}
    order: list[nn.Module] = []
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    out_numel: dict[nn.Module, int] = {}

    def hook(mod, args, out):
        if mod not in shapes and args and isinstance(args[0], torch.Tensor):
            shapes[mod] = tuple(args[0].shape)
            out_numel[mod] = out.numel() if isinstance(out, torch.Tensor) else 0
            order.append(mod)

    run_hooked(model, example_inputs, [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)], hook)
    if not order:
        raise HwpruneError("the model has no Conv/Linear layer that runs on the example input; nothing to prune")
    output_layer = order[-1]
    patterns = list(ignored or [])
    kept = {n for n in names.values() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    if patterns and not kept:
        raise HwpruneError(f"--ignore {','.join(patterns)}: no module of the model has that name (see named_modules())")
    ignored_mods = [output_layer] + [m for m in model.modules() if names.get(m) in kept]
    for m in order:
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels != m.out_channels:
            ignored_mods.append(m)  # depthwise with a channel multiplier: not a plain width

    graph = dependency_graph(model, example_inputs)
    layers = {m: _layer_info(m, names[m], shapes[m], out_numel[m]) for m in order}
    modules = dict(model.named_modules())
    heads = {q: att for q, att in find_attention(model).items() if modules[q] in layers}
    projections = {modules[n] for att in heads.values() for n in (att.q, att.k, att.v)}

    groups: list[PruneGroup] = []
    tp_groups = {}
    for g in all_groups(graph, ignored_mods + list(projections), PRUNABLE_TYPES):
        if any(dep.target.module in projections and graph.is_out_channel_pruning_fn(dep.handler) for dep, _ in g):
            continue  # an attention's heads: grouped below
        if through_unmapped(graph, g):
            continue
        group = _channel_group(g, graph, names, layers, min_keep)
        if group is not None:
            groups.append(group)
            tp_groups[group.id] = g
    for q, att in heads.items():
        if modules[q] not in ignored_mods:
            groups.append(_head_group(att, modules, layers, min_keep))
            tp_groups[q] = HeadGroup(att, modules, graph)
    # a group that touches an ignored module (on either side) keeps its width
    groups, tp_groups = _without(
        groups, tp_groups, layers, {g.id for g in groups if any(n in kept for n, _ in g.members)}
    )
    position = {names[m]: i for i, m in enumerate(order)}
    groups.sort(key=lambda g: position.get(g.id, len(position)))
    if probe:
        bad = unsafe_groups(model, example_inputs, [g.id for g in groups], {g.id: (g.multiple, g.unit) for g in groups})
        groups, tp_groups = _without(groups, tp_groups, layers, bad)
    if not groups:
        raise HwpruneError("no prunable channel group found in the model (only its output layer is prunable?)")
    return GroupAnalysis(graph, groups, list(layers.values()), names[output_layer], tp_groups)
