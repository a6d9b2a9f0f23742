"""Attention heads of transformer blocks as prunable groups (Hugging Face BERT/ViT/Llama/Qwen-style layers).

Torch-Pruning's dependency graph sees a BERT attention's query/key/value/output as one channel group but
not that channels only come off in whole heads, and on grouped-query attention (Llama, Qwen2) its group
search does not finish (TP#519 and this project's trial: a 2-layer Llama config with 4 query and 2 KV
heads ran for minutes). Attention layers are therefore found by their structure here and become groups
of their own: the query projection's outputs, in blocks of one KV head and the query heads that share it
(`unit` channels), with the key and value rows of that KV head and the output projection's columns.

Removing heads needs no change to the module's code in transformers 5: every attention there reshapes
its projections with `-1` heads (`view(*shape, -1, head_dim)`), so the head count follows the weights,
and the query-per-KV ratio (`num_key_value_groups`) is unchanged because KV heads go with their queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch_pruning as tp


@dataclass(frozen=True)
class Attention:
    """One attention layer: the names of its four projections and its head geometry."""

    name: str
    q: str
    k: str
    v: str
    o: str
    head_dim: int
    heads: int
    kv_heads: int

    @property
    def per_kv(self) -> int:
        """Query heads that share one key/value head (1 without grouped-query attention)."""
        return self.heads // self.kv_heads

    @property
    def unit(self) -> int:
        """Query-projection channels removed together: one KV head's query heads."""
        return self.head_dim * self.per_kv

    def kv_channels(self, q_channels: list[int]) -> list[int]:
        """The key/value rows that go with a set of query channels made of whole units."""
        units = sorted({c // self.unit for c in q_channels})
        return [j * self.head_dim + r for j in units for r in range(self.head_dim)]


def _linear(children: dict, name: str) -> nn.Linear | None:
    m = children.get(name)
    return m if isinstance(m, nn.Linear) else None


def _as_attention(name: str, m: nn.Module, modules: dict[str, nn.Module]) -> Attention | None:
    kids = dict(m.named_children())
    prefix = f"{name}." if name else ""
    if all(_linear(kids, c) for c in ("q_proj", "k_proj", "v_proj", "o_proj")):
        hd, names = getattr(m, "head_dim", None), ("q_proj", "k_proj", "v_proj", "o_proj")
        o_name = prefix + "o_proj"
    elif all(_linear(kids, c) for c in ("query", "key", "value")):
        hd, names = getattr(m, "attention_head_size", None), ("query", "key", "value")
        o_name = name.rsplit(".", 1)[0] + ".output.dense" if "." in name else "output.dense"
    else:
        return None
    q, k, v = (kids[c] for c in names[:3])
    o = modules.get(o_name)
    if not isinstance(hd, int) or not isinstance(o, nn.Linear) or hd < 1:
        return None
    if (
        q.out_features % hd
        or k.out_features % hd
        or k.out_features != v.out_features
        or o.in_features != q.out_features
    ):
        return None
    heads, kv = q.out_features // hd, k.out_features // hd
    if heads % kv:
        return None
    return Attention(name, prefix + names[0], prefix + names[1], prefix + names[2], o_name, hd, heads, kv)


def find_attention(model: nn.Module) -> dict[str, Attention]:
    """Query-projection name -> its attention layer, for every recognised attention in the model."""
    modules = dict(model.named_modules())
    found = {}
    for name, m in modules.items():
        att = _as_attention(name, m, modules)
        if att is not None:
            found[att.q] = att
    return found


class _Target:
    def __init__(self, module):
        self.module = module


class _Dep:
    def __init__(self, module, handler):
        self.target, self.handler = _Target(module), handler


class _Item:
    def __init__(self, dep, idxs, root_idxs):
        self.dep, self.idxs, self.root_idxs = dep, idxs, root_idxs

    def __iter__(self):  # unpacks as (dep, idxs), like a torch-pruning group item
        return iter((self.dep, self.idxs))


class HeadGroup:
    """A torch-pruning `Group` look-alike for one attention's heads: iterating gives (dependency, indices)
    pairs, and `items[i].root_idxs` maps each member's channels to query channels, which is all that
    scoring (`hwprune.importance`) reads. A key/value channel maps to the first query head of its group."""

    def __init__(self, att: Attention, modules: dict[str, nn.Module], graph: tp.DependencyGraph):
        q, k, v, o = (modules[n] for n in (att.q, att.k, att.v, att.o))
        pruner = graph.get_pruner_of_module(q)  # the graph's own Linear handlers: is_out_channel_pruning_fn knows them
        out_fn, in_fn = pruner.prune_out_channels, pruner.prune_in_channels
        size = q.out_features
        kv_root = [(c // att.head_dim) * att.unit + c % att.head_dim for c in range(k.out_features)]
        self.items = [
            _Item(_Dep(q, out_fn), list(range(size)), list(range(size))),
            _Item(_Dep(k, out_fn), list(range(k.out_features)), kv_root),
            _Item(_Dep(v, out_fn), list(range(v.out_features)), kv_root),
            _Item(_Dep(o, in_fn), list(range(size)), list(range(size))),
        ]

    def __iter__(self):
        return iter([(it.dep, it.idxs) for it in self.items])

    def __getitem__(self, i):
        return self.items[i]

    def __len__(self):
        return len(self.items)


def cut_heads(model: nn.Module, att: Attention, drop: list[int]) -> None:
    """Remove query channels `drop` (whole units) with their key/value rows and output columns, in place."""
    modules = dict(model.named_modules())
    q, k, v, o = (modules[n] for n in (att.q, att.k, att.v, att.o))
    dropped = set(drop)
    keep = [c for c in range(q.out_features) if c not in dropped]
    kv_keep = set(att.kv_channels(keep))
    kv_drop = [c for c in range(k.out_features) if c not in kv_keep]
    tp.prune_linear_out_channels(q, drop)
    tp.prune_linear_out_channels(k, kv_drop)
    tp.prune_linear_out_channels(v, kv_drop)
    tp.prune_linear_in_channels(o, drop)
    holder = modules[att.name]
    heads = len(keep) // att.head_dim
    for attr, value in (
        ("num_attention_heads", heads),
        ("num_heads", heads),
        ("all_head_size", len(keep)),
        ("num_key_value_heads", len(kv_keep) // att.head_dim),
    ):
        if isinstance(getattr(holder, attr, None), int):
            setattr(holder, attr, value)
