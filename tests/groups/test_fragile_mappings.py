"""Graphs torch-pruning 1.6.0 cannot follow: a concatenation whose part sizes it cannot infer (Swin's patch
merging, channels-last) and a reshape it mistakes for a flatten, multiplying a group's indices (Swin's
windows, an out-of-memory kill), and a search that keeps returning to the same nodes (MaxViT's partitions).
Groups through them are left out; the rest of the model still prunes."""

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.dependency import shape_infer

from hwprune.groups import trace
from hwprune.groups.analysis import analyze


class PatchMerge(nn.Module):
    """Channels-last patch merging as in Swin: four strided slices concatenated on the last dimension."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 8)
        self.norm = nn.LayerNorm(32)
        self.red = nn.Linear(32, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.proj(x.permute(0, 2, 3, 1))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.head(self.red(self.norm(x)).mean((1, 2)))


class Residual(nn.Module):
    """Two residual blocks: the stream's group reaches the same nodes more than once (through both adds)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a(x)
        x = x + self.b(x)
        return self.head(self.mid(x).mean((2, 3)))


class Flatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.fc(self.conv(x).flatten(1)))


def test_a_concatenation_of_unknown_sizes_is_left_out_instead_of_failing(monkeypatch):
    model, x = PatchMerge().eval(), torch.randn(2, 3, 8, 8)
    # what torch-pruning's shape inference returns past its recursion limit (swin_s, swin_b)
    monkeypatch.setattr(shape_infer, "infer_channels_between", lambda *args: None)
    with pytest.raises(TypeError):
        tp.DependencyGraph().build_dependency(model, example_inputs=x)
    graph = trace.dependency_graph(model, x)
    assert len(graph.hwprune_unmapped) == 1
    assert [g.id for g in analyze(model, x).groups] == ["red"]


def test_a_group_whose_indices_run_away_is_skipped(monkeypatch):
    model, x = Flatten().eval(), torch.randn(2, 3, 4, 4)
    assert [g.id for g in analyze(model, x).groups] == ["conv", "fc"]
    # the conv's 8 channels map to 128 inputs of fc: past a limit of 64 the group counts as a runaway
    monkeypatch.setattr(trace, "MAX_GROUP_INDICES", 64)
    assert [g.id for g in analyze(model, x).groups] == ["fc"]


def test_a_group_whose_search_keeps_returning_to_a_node_is_skipped(monkeypatch):
    model, x = Residual().eval(), torch.randn(2, 3, 8, 8)
    assert [g.id for g in analyze(model, x).groups] == ["b", "mid"]
    # the residual stream's group reaches its nodes twice; MaxViT's qkv group thousands of times
    monkeypatch.setattr(trace, "MAX_NODE_VISITS", 1)
    assert [g.id for g in analyze(model, x).groups] == ["mid"]
