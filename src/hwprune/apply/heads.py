"""Attention heads, physically removed: scoring, selection and surgery on `nn.MultiheadAttention`.

`nn.MultiheadAttention` ties the per-head inner width to `embed_dim`, the residual stream
(`F.multi_head_attention_forward` asserts `num_heads * head_dim == embed_dim`), and Torch-Pruning's MHA
pruner therefore narrows the whole stream. To drop heads but keep the stream, a pruned attention becomes a
`HeadPrunedAttention`: separate q/k/v projections `embed_dim -> num_heads * head_dim` and an output
projection back to `embed_dim`, a drop-in for `nn.MultiheadAttention`'s call signature. The cut itself is
Torch-Pruning's Linear surgery (`prune_linear_out_channels` on q/k/v rows, `prune_linear_in_channels` on
the output projection's columns). Removing a head is exactly zeroing its out-projection input columns
(tests/test_granularity.py checks this numerically). A head's score sums an element criterion of
`hwprune.importance` over the slices it owns (its q/k/v rows and biases, its out-projection columns), as
channel groups do; the criteria that declare head granularity are exactly those `score_heads` takes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from hwprune.apply.common import calibration_batches, check_ratio, set_module
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import param_count
from hwprune.importance import CRITERIA, HEAD, Stats, collect_stats, get_criterion, resolve_params


class HeadPrunedAttention(nn.Module):
    """Multi-head attention whose head count is independent of `embed_dim` (the residual stream width).

    Same call signature and results as `nn.MultiheadAttention` (batch_first or not, unbatched inputs,
    boolean or additive masks, key padding, averaged or per-head weights).
    """

    # Tells `hwprune.export` to rebuild this module in place of the source's nn.MultiheadAttention on load.
    hwprune_replacement = "attention-heads"

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(self.kdim, inner, bias=bias)
        self.v_proj = nn.Linear(self.vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=out_bias)

    @classmethod
    def from_module(cls, mha: nn.Module) -> HeadPrunedAttention:
        """The same attention (same weights, all heads) as an `nn.MultiheadAttention` or a HeadPrunedAttention."""
        if isinstance(mha, HeadPrunedAttention):
            return copy.deepcopy(mha)
        reason = unsupported_attention(mha)
        if reason:
            raise HwpruneError(f"cannot prune heads of this attention: {reason}")
        e, h = mha.embed_dim, mha.num_heads
        bias = mha.in_proj_bias is not None
        with torch.device("meta"):  # no random init: every entry is copied below
            out = cls(
                e, h, e // h, mha.kdim, mha.vdim, bias, mha.out_proj.bias is not None, mha.dropout, mha.batch_first
            )
        p = next(mha.parameters())
        out = out.to_empty(device=p.device).to(p.dtype)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                wq, wk, wv = mha.in_proj_weight.chunk(3)
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            for lin, w, i in ((out.q_proj, wq, 0), (out.k_proj, wk, 1), (out.v_proj, wv, 2)):
                lin.weight.copy_(w)
                if bias:
                    lin.bias.copy_(mha.in_proj_bias[i * e : (i + 1) * e])
            out.out_proj.weight.copy_(mha.out_proj.weight)
            if out.out_proj.bias is not None:
                out.out_proj.bias.copy_(mha.out_proj.bias)
        out.train(mha.training)
        return out

    def _mask(self, attn_mask, key_padding_mask, b: int, n_q: int, n_k: int, dtype) -> torch.Tensor | None:
        """One additive float mask broadcastable to (batch, heads, queries, keys); True in a bool mask = blocked."""

        def additive(m: torch.Tensor) -> torch.Tensor:
            if m.dtype == torch.bool:
                return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
            return m.to(dtype)

        mask = None
        if attn_mask is not None:
            m = additive(attn_mask)
            if m.dim() == 2:
                m = m.view(1, 1, n_q, n_k)
            elif m.shape[0] == b * self.num_heads:
                m = m.view(b, self.num_heads, n_q, n_k)
            else:
                raise HwpruneError(
                    f"a 3-D attn_mask needs batch * num_heads = {b * self.num_heads} rows (heads were pruned)"
                )
            mask = m
        if key_padding_mask is not None:
            m = additive(key_padding_mask).view(b, 1, 1, n_k)
            mask = m if mask is None else mask + m
        return mask

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:  # (L, E): one sequence
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, B, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, n_q, n_k = query.shape[0], query.shape[1], key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(b, n_q, h, d).transpose(1, 2)
        k = self.k_proj(key).view(b, n_k, h, d).transpose(1, 2)
        v = self.v_proj(value).view(b, n_k, h, d).transpose(1, 2)
        mask = self._mask(attn_mask, key_padding_mask, b, n_q, n_k, q.dtype)
        causal = is_causal and mask is None  # with a mask, is_causal is only a hint (as in nn.MultiheadAttention)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d)
            if causal:
                scores = scores.masked_fill(
                    torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).triu(1), float("-inf")
                )
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(-1)
            out = F.dropout(weights, p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n_q, h * d))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            weights = weights.mean(1) if average_attn_weights else weights
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights


def unsupported_attention(mha: nn.Module) -> str | None:
    """Why heads of this attention module cannot be pruned (None: they can)."""
    if isinstance(mha, nn.MultiheadAttention):
        if mha.bias_k is not None or mha.bias_v is not None:
            return "add_bias_kv=True is not supported"
        if mha.add_zero_attn:
            return "add_zero_attn=True is not supported"
        return None
    if isinstance(mha, HeadPrunedAttention):
        return None
    return f"{type(mha).__name__} is not an attention module hwprune knows"


@dataclass
class AttentionInfo:
    """One attention module whose heads can be removed."""

    name: str
    kind: str  # class name
    embed_dim: int
    num_heads: int
    head_dim: int


def find_heads(model: nn.Module) -> list[AttentionInfo]:
    """Attention modules whose heads hwprune can remove, in module order."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.MultiheadAttention, HeadPrunedAttention)) and unsupported_attention(m) is None:
            out.append(AttentionInfo(name, type(m).__name__, m.embed_dim, m.num_heads, m.head_dim))
    return out


def convert_attention(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Every prunable attention as a `HeadPrunedAttention` with all its heads (same function, fp32 rounding)."""
    if not inplace:
        model = copy.deepcopy(model)
    for a in find_heads(model):
        set_module(model, a.name, HeadPrunedAttention.from_module(model.get_submodule(a.name)))
    return model


def _head_slices(m: HeadPrunedAttention) -> list[tuple[nn.Linear, torch.Tensor, int]]:
    """(layer, parameter, dim) for every parameter a head owns a slice of: q/k/v rows (weights and biases)
    and out-projection columns. Head i owns entries i * head_dim ... (i + 1) * head_dim - 1 along `dim`.
    The out-projection bias is shared by all heads and belongs to none."""
    out = []
    for lin in (m.q_proj, m.k_proj, m.v_proj):
        out += [(lin, p, 0) for p in (lin.weight, lin.bias) if p is not None]
    out.append((m.out_proj, m.out_proj.weight, 1))
    return out


def _head_criterion(criterion: str):
    """The criterion, if it scores heads: an element criterion of `hwprune.importance` that declares head
    granularity (summed over each head's slices). Anything else is a HwpruneError naming those that do."""
    crit = get_criterion(criterion)
    if HEAD not in crit.granularities or crit.element is None:
        ok = sorted(c.name for c in CRITERIA.values() if HEAD in c.granularities and c.element is not None)
        raise HwpruneError(f"criterion '{criterion}' does not score heads; choose one of: {', '.join(ok)}")
    return crit


def score_heads(
    model: nn.Module,
    example_inputs,
    criterion: str = "l1",
    batches: list | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
    params: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Attention module name -> one score per head (float64, higher = keep).

    An element criterion of `hwprune.importance` summed over the slices the head owns (then the criterion's
    `finish`, if any), as channel groups are scored. `random` draws one uniform number per head. Criteria
    that read data use `batches` (a list of (inputs, labels)), or self-labelled random inputs when none are
    given. Scoring runs on a copy whose attentions are `HeadPrunedAttention` (q/k/v/out as nn.Linear) so
    per-layer statistics such as Wanda's input norms exist for every slice.
    """
    crit = _head_criterion(criterion)
    p = resolve_params(crit, params)
    attns = find_heads(model)
    gen = torch.Generator().manual_seed(seed)
    if criterion == "random":
        return {a.name: torch.rand(a.num_heads, generator=gen, dtype=torch.float64) for a in attns}
    work = convert_attention(model)
    if crit.needs_data and not batches:
        batches = calibration_batches(model, example_inputs, seed=seed)
    linears = {n: m for n, m in work.named_modules() if isinstance(m, nn.Linear)}
    got = collect_stats(crit, work, batches, loss_fn or F.cross_entropy, linears)
    scores = {}
    with torch.no_grad():
        for a in attns:
            m = work.get_submodule(a.name)
            total = torch.zeros(a.num_heads, dtype=torch.float64)
            for lin, prm, dim in _head_slices(m):
                xnorm = got.xnorm.get(lin) if prm is lin.weight else None
                st = Stats(got.grad.get(prm), got.grad_sq.get(prm), xnorm, gen)
                if crit.needs_grad and st.grad is None and st.grad_sq is None:
                    continue
                # The whole parameter at once, then summed per head (head i owns rows/columns i*d ... i*d+d-1).
                everything = torch.arange(prm.shape[dim], device=prm.device)
                per = crit.element(prm.detach().double(), st.select(dim, everything), p)
                total += per.transpose(0, dim).reshape(a.num_heads, -1).sum(1).cpu()
            scores[a.name] = crit.finish(total, p) if crit.finish is not None else total
    return scores


def remove_heads(model: nn.Module, heads: dict[str, list[int]], inplace: bool = False) -> nn.Module:
    """Remove the listed heads (attention module name -> head indices); at least one head must stay.

    Each touched attention becomes a `HeadPrunedAttention`; `embed_dim` is unchanged. Modules with an
    empty list are left as they are.
    """
    if not inplace:
        model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    for name, drop in heads.items():
        drop = sorted(set(int(i) for i in drop))
        if not drop:
            continue
        m = modules.get(name)
        if m is None or not isinstance(m, (nn.MultiheadAttention, HeadPrunedAttention)):
            raise HwpruneError(f"'{name}' is not an attention module of this model")
        if drop[0] < 0 or drop[-1] >= m.num_heads:
            raise HwpruneError(f"'{name}' has heads 0..{m.num_heads - 1}; cannot remove {drop}")
        if len(drop) >= m.num_heads:
            raise HwpruneError(f"'{name}': removing all {m.num_heads} heads; keep at least one")
        attn = HeadPrunedAttention.from_module(m)
        d = attn.head_dim
        idxs = [i * d + j for i in drop for j in range(d)]
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            tp.prune_linear_out_channels(lin, idxs)
        tp.prune_linear_in_channels(attn.out_proj, idxs)
        attn.num_heads -= len(drop)
        set_module(model, name, attn)
    return model


@dataclass
class HeadLayerResult:
    name: str
    heads_before: int
    heads_after: int
    removed: list[int]
    scores: list[float]  # one per head of the module before pruning


@dataclass
class HeadPruneInfo:
    """What `prune_heads` removed, as plain data for the report."""

    criterion: str
    scope: str
    ratio: float
    heads_before: int
    heads_after: int
    params_before: int
    params_after: int
    layers: list[HeadLayerResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def select_heads(scores: dict[str, torch.Tensor], ratio: float, scope: str, comparable: bool) -> dict[str, list[int]]:
    """Heads to remove: the lowest `floor(ratio * heads)` per layer, or globally keeping >= 1 head per layer.

    Global ranking divides each layer's scores by their mean first unless the criterion is `comparable`
    (the convention of `hwprune.importance.normalized`).
    """
    check_ratio(ratio)
    if scope == "layer":
        out = {}
        for name, s in scores.items():
            k = min(int(math.floor(ratio * len(s))), len(s) - 1)
            out[name] = sorted(torch.argsort(s, stable=True)[:k].tolist())
        return out
    if scope != "global":
        raise HwpruneError(f"unknown head scope '{scope}'; choose layer or global")
    ranked = []
    for name, s in scores.items():
        s = s if comparable else s / max(float(s.mean()), 1e-12)
        ranked += [(float(v), name, i) for i, v in enumerate(s.tolist())]
    ranked.sort()
    k = int(math.floor(ratio * len(ranked)))
    left = {name: len(s) for name, s in scores.items()}
    out = {name: [] for name in scores}
    for _, name, i in ranked:
        if k == 0:
            break
        if left[name] > 1:
            out[name].append(i)
            left[name] -= 1
            k -= 1
    return {name: sorted(v) for name, v in out.items()}


def prune_heads(
    model: nn.Module,
    example_inputs,
    criterion: str = "l1",
    ratio: float = 0.5,
    batches: list | None = None,
    scope: str = "layer",
    loss_fn: Callable | None = None,
    seed: int = 0,
    params: dict | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, HeadPruneInfo]:
    """Remove the lowest-scoring attention heads: `ratio` of each layer's (scope="layer") or of all heads
    (scope="global", at least one head kept per layer). Returns the pruned model and what was removed."""
    check_ratio(ratio)
    if scope not in ("layer", "global"):
        raise HwpruneError(f"unknown head scope '{scope}'; choose layer or global")
    crit = _head_criterion(criterion)
    if not find_heads(model):
        raise HwpruneError("the model has no nn.MultiheadAttention whose heads can be pruned")
    scores = score_heads(model, example_inputs, criterion, batches, loss_fn, seed, params)
    drop = select_heads(scores, ratio, scope, crit.comparable or criterion == "random")
    before = param_count(model)
    pruned = (
        remove_heads(model, drop, inplace=inplace)
        if any(drop.values())
        else (model if inplace else copy.deepcopy(model))
    )
    layers = [
        HeadLayerResult(name, len(s), len(s) - len(drop[name]), drop[name], [float(v) for v in s])
        for name, s in scores.items()
    ]
    info = HeadPruneInfo(
        criterion,
        scope,
        ratio,
        sum(r.heads_before for r in layers),
        sum(r.heads_after for r in layers),
        before,
        param_count(pruned),
        layers,
    )
    return pruned, info
