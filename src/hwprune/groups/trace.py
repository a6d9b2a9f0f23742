"""Tracing a model into torch-pruning's dependency graph, and its groups, on graphs torch-pruning 1.6.0 cannot
fully follow (channel shuffles, Swin's channels-last windows and patch merging): what it cannot map is left
out of pruning instead of failing the trace or exhausting memory."""

from __future__ import annotations

import contextlib

import torch.nn as nn
import torch_pruning as tp
from torch_pruning.dependency import group as tp_group
from torch_pruning.dependency import index_mapping

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import primary_output

#: torch-pruning 1.6.0 index-mapping updates that fail on graphs they cannot follow, and how: a channel
#: shuffle's view (ShuffleNetV2) divides by a channel count of zero; Swin's patch merging concatenates along
#: the last (channels-last) dimension, sizes it cannot infer, and it sums a None.
_FRAGILE_MAPPINGS = {"update_reshape_index_mapping": ZeroDivisionError, "update_concat_index_mapping": TypeError}


#: The most channel indices one mapping may produce. torch-pruning reads every tensor as channels-first;
#: on a channels-last network (Swin: (B, H, W, C) windows reshaped to (B * windows, 49, C)) it takes the
#: window reshapes for flattens, and each pass around the residual stream multiplies a group's indices
#: (22 GB and an out-of-memory kill for swin_s). A real flatten feeds a Linear: VGG's 512 x 7 x 7 = 25,088.
MAX_GROUP_INDICES = 1 << 18
#: The most times one group may reach the same node with other indices. MaxViT's window/grid partitions send
#: torch-pruning's search round its attention again and again with new index sets (its qkv group had 3,000
#: entries after 50 s and kept growing; the membership test is linear, so the search slows quadratically).
#: Counted over torchvision's resnet152, densenet201, googlenet, inception_v3, convnext_large, shufflenet_v2,
#: vit_h_14 and swin_b (2026-12-05), a group that finishes reaches a node at most 6 times (swin_b).
MAX_NODE_VISITS = 16


class _RunawayGroup(RuntimeError):
    """A group's channel indices grew past MAX_GROUP_INDICES, or its search kept returning to one node
    (MAX_NODE_VISITS): the group is skipped (see `all_groups`)."""


@contextlib.contextmanager
def _tolerant_mappings(unmapped: list):
    """Run torch-pruning with `_FRAGILE_MAPPINGS` guarded: a node whose mapping fails keeps an identity mapping
    and is recorded in `unmapped`, and every group through it is refused afterwards (`through_unmapped`),
    instead of the whole trace failing."""
    originals = {name: getattr(index_mapping, name) for name in _FRAGILE_MAPPINGS}

    def guarded(name):
        def update(graph, node):
            try:
                originals[name](graph, node)
            except _FRAGILE_MAPPINGS[name]:
                if node not in unmapped:
                    unmapped.append(node)

        return update

    expand = index_mapping._FlattenIndexMapping.__call__

    def bounded(self, idxs):
        out = expand(self, idxs)
        if len(out) > MAX_GROUP_INDICES:
            raise _RunawayGroup(f"a reshape maps {len(idxs)} channel indices to {len(out)}")
        return out

    add_dep = tp_group.Group.add_dep

    def counted(self, dep, idxs):
        visits = self.__dict__.setdefault("_hwprune_visits", {})
        visits[dep.target] = visits.get(dep.target, 0) + 1
        if visits[dep.target] > MAX_NODE_VISITS:
            raise _RunawayGroup(f"the group reached {dep.target.name} {MAX_NODE_VISITS + 1} times")
        add_dep(self, dep, idxs)

    for name in originals:  # looked up by name in update_index_mapping
        setattr(index_mapping, name, guarded(name))
    index_mapping._FlattenIndexMapping.__call__ = bounded
    tp_group.Group.add_dep = counted
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(index_mapping, name, fn)
        index_mapping._FlattenIndexMapping.__call__ = expand
        tp_group.Group.add_dep = add_dep


class _Graph(tp.DependencyGraph):
    """torch-pruning's graph, tolerant of reshapes and concatenations it cannot follow: it re-derives its index
    mappings on every group it builds, so both the trace and the group search run under `_tolerant_mappings`."""

    def __init__(self):
        super().__init__()
        self.hwprune_unmapped: list = []

    def build_dependency(self, *args, **kwargs):
        with _tolerant_mappings(self.hwprune_unmapped):
            return super().build_dependency(*args, **kwargs)

    def get_pruning_group(self, *args, **kwargs):
        with _tolerant_mappings(self.hwprune_unmapped):
            return super().get_pruning_group(*args, **kwargs)


def dependency_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    """Torch-Pruning's graph of `model`, traced on its primary output (a ModelOutput's logits)."""
    try:
        return _Graph().build_dependency(
            model, example_inputs=example_inputs, verbose=False, output_transform=primary_output
        )
    except Exception as e:  # torch-pruning's tracer fails inside on some graphs (ZeroDivisionError on shufflenet_v2)
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise HwpruneError(
            f"cannot trace the model's channel dependencies (torch-pruning {tp.__version__} raised "
            f"{type(e).__name__}{': ' + msg if msg else ''}); this architecture cannot be channel-pruned"
        ) from e


def through_unmapped(graph: tp.DependencyGraph, g) -> bool:
    """Do the group's channels pass a reshape or concatenation torch-pruning could not follow
    (`_tolerant_mappings`)? Its identity mapping may not be the real one, so such a group keeps its width."""
    unmapped = getattr(graph, "hwprune_unmapped", ())
    return any(dep.target in unmapped for dep, _ in g)


def all_groups(graph: tp.DependencyGraph, ignored: list, root_types) -> list:
    """Every pruning group rooted at a `root_types` layer's outputs, as torch-pruning's `get_all_groups`, but a
    root whose group cannot be built (its index mapping through a split fails after a channel shuffle) is
    skipped, so that layer keeps its width, instead of failing the whole analysis."""
    ignored = ignored + graph.IGNORED_LAYERS_IN_TRACING
    visited, out = set(), []
    for m in list(graph.module2node):
        if m in ignored or m in visited or not isinstance(m, root_types):
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        try:
            g = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except (IndexError, ValueError, _RunawayGroup):
            continue
        outs = [d.target.module for d, _ in g if graph.is_out_channel_pruning_fn(d.handler)]
        visited.update(outs)
        if not any(o in ignored for o in outs):
            out.append(g)
    return out
