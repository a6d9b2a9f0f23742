"""Stage 2: importance scores, from a criterion found by name in a registry.

Two granularities share one registry:

- *Channel level* (`compute_scores`): a score per channel of each coupled group. Most criteria score
  every parameter entry a channel owns in its group (the root's filters, the BN entries, the consumers'
  input columns) and *sum* those slices (Torch-Pruning's default group reduction; Molchanov et al. 2019
  sum Taylor terms the same way). Criteria defined on the unit itself (activation, APoZ, loss change)
  are measured on the group's output instead; each criterion's docstring (its `aggregation`) says which.
- *Weight level* (`weight_scores`): a score per entry of every Conv/Linear `.weight`, for unstructured
  and N:M masks. Unit-level criteria have no per-weight form and say so.

Higher scores are always more important. Data-driven criteria use cross-entropy on (x, y) calibration
batches with the model in eval mode; no gradient, hook or mode change is left on the model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwprune.core.errors import HwpruneError
from hwprune.core.modules import call
from hwprune.groups.analysis import PRUNABLE_TYPES, GroupAnalysis

CHANNEL, HEAD, BLOCK, WEIGHT = "channel", "head", "block", "weight"
ALL_GRANULARITIES = (CHANNEL, HEAD, BLOCK, WEIGHT)


#: Norm layers whose output stands for the unit's output when they directly follow the group root.
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Stats:
    """What an element-wise criterion may read for one parameter (or one slice of it).

    grad: dL/dw of the mean calibration loss; grad_sq: mean over batches of the per-batch (dL/dw)^2;
    xnorm: for Conv/Linear weights, the L2 norm of the input column each weight multiplies (Wanda), of
    the weight's shape; None where a statistic was not collected or does not apply (biases, norms).
    """

    grad: torch.Tensor | None = None
    grad_sq: torch.Tensor | None = None
    xnorm: torch.Tensor | None = None
    generator: torch.Generator | None = None

    def select(self, dim: int, idx: torch.Tensor) -> Stats:
        """The statistics of the entries `idx` along `dim` (one channel's slice), in float64."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return t.index_select(dim, idx.to(t.device)).double() if t is not None else None

        return Stats(pick(self.grad), pick(self.grad_sq), pick(self.xnorm), self.generator)


ElementFn = Callable[[torch.Tensor, Stats, dict], torch.Tensor]
UnitFn = Callable[[nn.Module, GroupAnalysis, Batches, Callable, dict], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Criterion:
    """A named scoring rule.

    `element`: per-entry score of a parameter (weight level, and summed over slices at channel level);
    `finish`: optional map applied to a unit's summed slices (redundancy's saturation); `unit`: a rule
    that scores a group's channels directly (measured on outputs), for criteria with no per-weight form.
    `needs`: statistics it reads: "grad", "grad_sq", "xnorm" (all need calibration data) or "data".
    `comparable`: its scores are in the same units in every group (a loss change, a fraction), so
    allocators may compare channels across groups as they are; otherwise each group's scores are divided
    by their mean. `params`: the parameters it takes, with their defaults.
    """

    name: str
    description: str
    granularities: tuple[str, ...]
    aggregation: str
    comparable: bool
    needs: frozenset[str] = frozenset()
    params: dict[str, float] = field(default_factory=dict)
    element: ElementFn | None = None
    finish: Callable[[torch.Tensor, dict], torch.Tensor] | None = None
    unit: UnitFn | None = None

    @property
    def needs_grad(self) -> bool:
        return bool(self.needs & {"grad", "grad_sq"})

    @property
    def needs_data(self) -> bool:
        return bool(self.needs)


CRITERIA: dict[str, Criterion] = {}


def register_criterion(
    name: str,
    *,
    description: str,
    comparable: bool,
    needs: Iterable[str] = (),
    granularities: Iterable[str] = ALL_GRANULARITIES,
    params: dict[str, float] | None = None,
    finish: Callable[[torch.Tensor, dict], torch.Tensor] | None = None,
    unit: bool = False,
):
    """Decorator: add a criterion under `name`.

    The decorated function is an element rule `fn(w, stats, params) -> per-entry scores` or, with
    `unit=True`, a unit rule `fn(model, analysis, batches, loss_fn, params) -> {group id: scores}`. Its
    docstring states how a unit's score comes from its group and becomes the criterion's `aggregation`.
    """

    def wrap(fn):
        CRITERIA[name] = Criterion(
            name,
            description,
            tuple(granularities),
            " ".join((fn.__doc__ or "").split()),
            comparable,
            frozenset(needs),
            dict(params or {}),
            None if unit else fn,
            finish,
            fn if unit else None,
        )
        return fn

    return wrap


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise HwpruneError(f"unknown criterion '{name}'; choose one of: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


def list_criteria() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, one-line description, granularities) of every registered criterion, sorted by name."""
    return [(c.name, c.description, c.granularities) for c in sorted(CRITERIA.values(), key=lambda c: c.name)]


def _params(crit: Criterion, params: dict | None) -> dict:
    """The criterion's defaults overridden by `params`; unknown names and non-positive values are errors."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(crit.params))
    if unknown:
        takes = ", ".join(f"{k} (default {v})" for k, v in crit.params.items()) or "no parameters"
        raise HwpruneError(f"criterion '{crit.name}' has no parameter '{unknown[0]}'; it takes {takes}")
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise HwpruneError(f"criterion '{crit.name}' parameter '{k}' must be a positive number, got {v!r}")
        if isinstance(crit.params[k], int) and int(v) != v:
            raise HwpruneError(f"criterion '{crit.name}' parameter '{k}' must be a whole number, got {v!r}")
    return {**crit.params, **params}


# --- element criteria (channel level: summed over slices; weight level: as they are) -------------------


@register_criterion("l1", description="magnitude |w|", comparable=False)
def _l1(w, s, p):
    """Channel: sum of |w| over every parameter slice the channel owns in its group. Weight: |w|."""
    return w.abs()


@register_criterion("l2", description="squared magnitude w^2", comparable=False)
def _l2(w, s, p):
    """Channel: sum of w^2 over every parameter slice the channel owns in its group. Weight: w^2."""
    return w.pow(2)


@register_criterion(
    "redundancy",
    description="neuron redundancy r_i = S_i / (S_i + lambda), S_i = sum of the unit's squared weights",
    comparable=True,  # dimensionless, in [0, 1) in every group
    granularities=(CHANNEL, HEAD),
    # lambda = 1: PyTorch's default init (uniform in +-1/sqrt(fan_in)) gives a unit S ~ 1/3 per fan-in
    # side, so r sits in its unsaturated range (~0.25-0.5) instead of at 0 or 1.
    params={"lambda": 1.0},
    finish=lambda total, p: total / (total + p["lambda"]),
)
def _redundancy(w, s, p):
    """S_i = sum of w^2 over every parameter slice unit i owns in its group (incoming row, bias, norm
    entries, outgoing column), then r_i = S_i / (S_i + lambda). Units only: r saturates per unit."""
    return w.pow(2)


@register_criterion(
    "gradient", description="gradient sensitivity |dL/dw| on calibration batches", comparable=False, needs={"grad"}
)
def _gradient(w, s, p):
    """Channel: sum of |dL/dw| over the channel's slices. Weight: |dL/dw| (L: mean calibration loss)."""
    return s.grad.abs() if s.grad is not None else None


@register_criterion(
    "taylor",
    description="first-order Taylor |w * dL/dw| on calibration batches (Molchanov et al. 2019)",
    comparable=True,
    needs={"grad"},
)
def _taylor(w, s, p):
    """Channel: sum of |w * dL/dw| over the channel's slices. Weight: |w * dL/dw|."""
    return (w * s.grad).abs() if s.grad is not None else None


@register_criterion(
    "hessian",
    description="OBD saliency 1/2 F_ii w^2, F = diagonal Fisher from per-batch gradients (LeCun et al. 1990)",
    comparable=True,  # a predicted loss change, like taylor
    needs={"grad_sq"},
)
def _hessian(w, s, p):
    """Channel: sum of 1/2 F_ii w_i^2 over the channel's slices (OBD's saliencies add under the diagonal
    approximation). Weight: 1/2 F_ii w_i^2, F_ii = mean over batches of (dL_b/dw_i)^2."""
    # OBD's diagonal Hessian approximated by the empirical Fisher: mean over batches of squared gradients.
    return 0.5 * s.grad_sq * w.pow(2) if s.grad_sq is not None else None


@register_criterion(
    "wanda",
    description="|W_ij| * ||X_j||_2, X_j the input column a weight multiplies (Sun et al. 2023; conv: im2col column)",
    comparable=False,
    needs={"xnorm"},
)
def _wanda(w, s, p):
    """Channel: sum of |W_ij| * ||X_j|| over the channel's Conv/Linear weight slices (its filters and the
    consumers' input columns); biases and norm entries multiply no input and add 0. Weight: |W_ij| *
    ||X_j||, X_j the input column weight ij multiplies (conv: channel c at kernel offset k, over every
    output position and sample, i.e. the im2col column)."""
    return w.abs() * s.xnorm if s.xnorm is not None else torch.zeros_like(w)


@register_criterion("random", description="uniform random scores (a baseline)", comparable=True)
def _random(w, s, p):
    """Channel: sum of uniform [0, 1) draws over the channel's slices. Weight: a uniform [0, 1) draw."""
    return torch.rand(w.shape, generator=s.generator, dtype=torch.float64).to(w.device)


# --- statistics -------------------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


class _EvalMode:
    """Eval mode for the duration; the caller's mode comes back afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _gradient_stats(
    model: nn.Module, batches: Batches, loss_fn: Callable, want_sq: bool
) -> tuple[dict[nn.Parameter, torch.Tensor], dict[nn.Parameter, torch.Tensor]]:
    """Mean gradient and (if asked) mean squared per-batch gradient of every trainable parameter.

    `torch.autograd.grad` returns the gradients instead of accumulating them in `.grad`, so the model's
    own `.grad` fields are never touched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    g_sum: dict[nn.Parameter, torch.Tensor] = {}
    sq_sum: dict[nn.Parameter, torch.Tensor] = {}
    device = _device(model)
    with _EvalMode(model), torch.enable_grad():
        for x, y in batches:
            loss = loss_fn(call(model, _to(x, device)), _to(y, device))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                if g is None:
                    continue
                g = g.detach().float()
                g_sum[p] = g_sum[p] + g if p in g_sum else g.clone()
                if want_sq:
                    sq_sum[p] = sq_sum[p] + g * g if p in sq_sum else g * g
    n = len(batches)
    return {p: g / n for p, g in g_sum.items()}, {p: g / n for p, g in sq_sum.items()}


def _hooked_passes(model: nn.Module, hooks: list[tuple[nn.Module, Callable]], inputs: list) -> None:
    """No-grad, eval-mode forward passes over `inputs` with each (module, forward hook) attached; the hooks
    are removed and the model's mode restored afterwards."""
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    device = _device(model)
    try:
        with _EvalMode(model), torch.no_grad():
            for x in inputs:
                call(model, _to(x, device))
    finally:
        for h in handles:
            h.remove()


def _conv_column_sq(module: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    """Sum of squares of each im2col input column of a conv: shape (in_channels, *kernel_size).

    Column (c, k) holds input channel c at kernel offset k for every output position and sample (the
    unfolded matrix a conv multiplies its weights with); padding entries count as the padding mode makes them.
    """
    nd = len(module.kernel_size)
    if x.dim() == nd + 1:  # unbatched input
        x = x.unsqueeze(0)
    x = x.detach().float()
    pad = module._reversed_padding_repeated_twice
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    x2 = x * x
    spatial = x2.shape[2:]
    k, s, d = module.kernel_size, module.stride, module.dilation
    out_len = [(spatial[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(nd)]
    col = torch.zeros((x2.shape[1], *k), device=x2.device)
    for off in itertools.product(*(range(ki) for ki in k)):
        window = tuple(slice(off[i] * d[i], off[i] * d[i] + (out_len[i] - 1) * s[i] + 1, s[i]) for i in range(nd))
        col[(slice(None), *off)] = x2[(slice(None), slice(None), *window)].sum(dim=[0, *range(2, 2 + nd)])
    return col


def _input_norms(model: nn.Module, batches: Batches, modules: dict[str, nn.Module]) -> dict[nn.Module, torch.Tensor]:
    """For each Conv/Linear that runs: ||X_j||_2 of the input column each weight entry multiplies,
    over all calibration samples (and positions/tokens), in the shape of the module's weight."""
    sq: dict[nn.Module, torch.Tensor] = {}

    def hook(mod, args, out):
        x = args[0]
        if isinstance(mod, nn.Linear):
            v = x.detach().float().reshape(-1, mod.in_features).pow(2).sum(0)
        else:
            v = _conv_column_sq(mod, x)
        sq[mod] = sq[mod] + v if mod in sq else v

    _hooked_passes(model, [(m, hook) for m in modules.values()], [x for x, _y in batches])
    out: dict[nn.Module, torch.Tensor] = {}
    for m, v in sq.items():
        norm = v.sqrt()
        if isinstance(m, nn.Linear):
            out[m] = norm.expand(m.out_features, m.in_features)
        else:
            # Weight [o, c'] multiplies input channel (o // out-per-group) * in-per-group + c'.
            cpg, opg = m.in_channels // m.groups, m.out_channels // m.groups
            o = torch.arange(m.out_channels, device=norm.device)
            idx = (o // opg).unsqueeze(1) * cpg + torch.arange(cpg, device=norm.device)
            out[m] = norm[idx]
    return out


@dataclass
class _Collected:
    grad: dict = field(default_factory=dict)
    grad_sq: dict = field(default_factory=dict)
    xnorm: dict = field(default_factory=dict)


def _collect(
    crit: Criterion, model: nn.Module, batches: Batches | None, loss_fn: Callable, modules: dict[str, nn.Module]
) -> _Collected:
    if crit.needs_data and not batches:
        raise HwpruneError(
            f"criterion '{crit.name}' needs calibration data; pass --data or choose one of: "
            + ", ".join(sorted(c.name for c in CRITERIA.values() if not c.needs_data))
        )
    got = _Collected()
    if crit.needs_grad:
        got.grad, got.grad_sq = _gradient_stats(model, batches, loss_fn, "grad_sq" in crit.needs)
    if "xnorm" in crit.needs:
        got.xnorm = _input_norms(model, batches, modules)
    return got


# --- unit criteria (measured on a group's output) ---------------------------------------------------------


def _channel_dim(module: nn.Module) -> int:
    """Where the channels are in the module's output: last for Linear/LayerNorm (features), else dim 1."""
    return -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1


def _out_members(analysis: GroupAnalysis, gid: str) -> list[tuple[nn.Module, list[int], list[int]]]:
    """(module, its channel indices, the root channels they map to) for every out-side member of a group."""
    group = analysis.tp_groups[gid]
    seen, out = set(), []
    for dep, idxs in group:
        mod = dep.target.module
        if not isinstance(mod, nn.Module) or mod in seen or not analysis.graph.is_out_channel_pruning_fn(dep.handler):
            continue
        seen.add(mod)
        out.append((mod, list(idxs), dep_root_idxs(dep, idxs, group)))
    return out


def _measure_points(model: nn.Module, analysis: GroupAnalysis, x) -> dict[str, nn.Module]:
    """Group id -> the module whose output is the unit's output: the root, or a norm layer of the group
    that is called directly on the root's output (a conv's BatchNorm). One probe forward pass decides."""
    roots = {analysis.tp_groups[g.id][0].dep.target.module: g.id for g in analysis.groups}
    norms = {m: g.id for g in analysis.groups for m, _, _ in _out_members(analysis, g.id) if isinstance(m, NORM_TYPES)}
    root_out: dict[str, torch.Tensor] = {}
    point = {gid: root for root, gid in roots.items()}

    def on_root(mod, args, out):
        root_out.setdefault(roots[mod], out)

    def on_norm(mod, args, out):
        gid = norms[mod]
        if args and gid in root_out and args[0] is root_out[gid] and point[gid] in roots:
            point[gid] = mod

    _hooked_passes(model, [(m, on_root) for m in roots] + [(m, on_norm) for m in norms], [x])
    return point


def _output_stats(
    model: nn.Module, analysis: GroupAnalysis, batches: Batches, reduce: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, np.ndarray]:
    """Group id -> mean over calibration entries of reduce(unit output), per channel."""
    point = _measure_points(model, analysis, batches[0][0])
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def make_hook(gid: str):
        def hook(mod, args, out):
            a = out.detach().float().movedim(_channel_dim(mod), 0)
            a = a.reshape(a.shape[0], -1)
            v = reduce(a).sum(1).double().cpu()
            sums[gid] = sums[gid] + v if gid in sums else v
            counts[gid] = counts.get(gid, 0) + a.shape[1]

        return hook

    _hooked_passes(model, [(m, make_hook(gid)) for gid, m in point.items()], [x for x, _y in batches])
    silent = [g.id for g in analysis.groups if g.id not in sums]
    if silent:
        raise HwpruneError(
            f"the output of group '{silent[0]}' could not be observed (its root never ran as a module); "
            "choose a weight-based criterion such as l1 or taylor"
        )
    return {g.id: (sums[g.id] / counts[g.id]).numpy() for g in analysis.groups}


@register_criterion(
    "activation",
    description="mean |activation| of the unit's output on calibration data",
    comparable=False,
    needs={"data"},
    granularities=(CHANNEL, HEAD),
    unit=True,
)
def _activation(model, analysis, batches, loss_fn, p):
    """Measured on the unit's output: mean |a| of the group root's output channel over every calibration
    entry, taken after the norm layer that is called directly on the root's output when there is one
    (a conv's BatchNorm). Other out-side members of the group (residual branches) are not measured."""
    return _output_stats(model, analysis, batches, torch.abs)


@register_criterion(
    "apoz",
    description="1 - APoZ, the share of outputs a ReLU keeps non-zero (Hu et al. 2016: lower APoZ = more important)",
    comparable=True,  # a fraction in [0, 1] in every group
    needs={"data"},
    granularities=(CHANNEL, HEAD),
    unit=True,
)
def _apoz(model, analysis, batches, loss_fn, p):
    """Measured on the unit's output (the same point as `activation`): 1 - the share of entries <= 0,
    i.e. of entries a following ReLU would zero."""
    return _output_stats(model, analysis, batches, lambda a: (a > 0).double())


def _repeat(x, k: int):
    if isinstance(x, torch.Tensor):
        return torch.cat([x] * k) if k > 1 else x
    if isinstance(x, (tuple, list)):
        return type(x)(_repeat(v, k) for v in x)
    if isinstance(x, dict):
        return {n: _repeat(v, k) for n, v in x.items()}
    return x


def _batch_size(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    vals = list(x.values()) if isinstance(x, dict) else list(x) if isinstance(x, (tuple, list)) else []
    return next((v.shape[0] for v in vals if isinstance(v, torch.Tensor)), 1)


@register_criterion(
    "loss-change",
    description="measured rise of the calibration loss when the unit is removed (its outputs zeroed)",
    comparable=True,  # a loss change in every group
    needs={"data"},
    granularities=(CHANNEL, HEAD, BLOCK),
    # Cost: one forward of every sample per channel of every group. `batches` caps the calibration
    # batches used; `max_batch` packs several channels' zeroings into one forward (the batch repeated
    # once per channel, each copy with another channel zeroed), so the number of forward calls is
    # about sum over groups of size * batch / max_batch.
    params={"batches": 2, "max_batch": 256},
    unit=True,
)
def _loss_change(model, analysis, batches, loss_fn, p):
    """Measured on the whole unit: mean over the first `batches` calibration batches of L(unit removed) -
    L(dense), the unit removed by zeroing its channel in the output of every out-side member of the
    group (roots, their norms, residual branches that add into it); a removal that lowers the loss scores 0."""
    batches = list(batches)[: int(p["batches"])]
    device = _device(model)
    state: dict = {"chunk": None}
    scores: dict[str, np.ndarray] = {}

    def make_hook(local: list[int], root: list[int]):
        def hook(mod, args, out):
            chunk = state["chunk"]
            if chunk is None or not isinstance(out, torch.Tensor):
                return None
            k = len(chunk)
            cd = _channel_dim(mod) % out.dim()
            if out.shape[0] % k:
                raise HwpruneError(
                    f"loss-change: an output of '{type(mod).__name__}' is not batch-first; "
                    "pass params={'max_batch': <calibration batch size>} to zero one channel per forward"
                )
            mask = torch.ones(k, out.shape[cd], dtype=out.dtype, device=out.device)
            for i, c in enumerate(chunk):
                mask[i, [lo for lo, r in zip(local, root, strict=True) if r == c]] = 0
            shape = [k] + [out.shape[d] if d == cd else 1 for d in range(out.dim())]
            o = out.reshape(k, out.shape[0] // k, *out.shape[1:])
            return (o * mask.view(shape)).reshape(out.shape)

        return hook

    with _EvalMode(model), torch.no_grad():
        dev_batches = [(_to(x, device), _to(y, device)) for x, y in batches]
        base = [float(loss_fn(call(model, x), y)) for x, y in dev_batches]
        for g in analysis.groups:
            rise = np.zeros(g.size)
            handles = [m.register_forward_hook(make_hook(lo, ro)) for m, lo, ro in _out_members(analysis, g.id)]
            try:
                for (x, y), b in zip(dev_batches, base, strict=True):
                    n = _batch_size(x)
                    per = max(1, int(p["max_batch"]) // n)
                    for start in range(0, g.size, per):
                        chunk = list(range(start, min(g.size, start + per)))
                        state["chunk"] = chunk
                        logits = call(model, _repeat(x, len(chunk)))
                        state["chunk"] = None
                        logits = logits.reshape(len(chunk), -1, *logits.shape[1:])
                        for i, c in enumerate(chunk):
                            rise[c] += float(loss_fn(logits[i], y)) - b
            finally:
                state["chunk"] = None
                for h in handles:
                    h.remove()
            scores[g.id] = np.maximum(rise / len(dev_batches), 0.0)
    return scores


# --- weight level -----------------------------------------------------------------------------------------


def weight_scores(
    model: nn.Module,
    criterion: str,
    batches: list[tuple[torch.Tensor, torch.Tensor]] | None,
    params: dict | None = None,
    layers: list[str] | None = None,
    *,
    seed: int = 0,
    loss_fn: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """Per-weight scores of every Conv/Linear (or of `layers`): module name -> tensor of its weight's shape.

    Higher is more important; float32 on the weight's device. The caller decides which layers to mask.
    Unit-level criteria (no per-weight form) raise HwpruneError.
    """
    crit = get_criterion(criterion)
    if WEIGHT not in crit.granularities:
        weight_level = sorted(c.name for c in CRITERIA.values() if WEIGHT in c.granularities)
        raise HwpruneError(
            f"criterion '{criterion}' scores whole units ({', '.join(crit.granularities)}), not single weights; "
            f"for weight-level sparsity choose one of: {', '.join(weight_level)}"
        )
    p = _params(crit, params)
    named = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if layers is not None:
        missing = [n for n in layers if n not in named]
        if missing:
            raise HwpruneError(f"layer '{missing[0]}' is not a Conv/Linear module of the model")
        named = {n: named[n] for n in layers}
    got = _collect(crit, model, batches, loss_fn or F.cross_entropy, named)
    gen = torch.Generator().manual_seed(seed)
    scores: dict[str, torch.Tensor] = {}
    missing_stats = []
    with torch.no_grad():
        for name, m in named.items():
            w = m.weight.detach()
            st = Stats(got.grad.get(m.weight), got.grad_sq.get(m.weight), got.xnorm.get(m), gen)
            if ("xnorm" in crit.needs and st.xnorm is None) or (crit.needs_grad and st.grad is None):
                missing_stats.append(name)
                continue
            scores[name] = crit.element(w.float(), st, p).float().to(w.device)
    if missing_stats:
        what = "inputs (it never ran as a module)" if "xnorm" in crit.needs else "gradient (frozen or unused)"
        raise HwpruneError(
            f"criterion '{criterion}' could not see the {what} of layer(s) {', '.join(missing_stats[:5])}; "
            "leave them out with layers=[...] or choose a magnitude criterion (l1, l2)"
        )
    return scores


# --- channel level ----------------------------------------------------------------------------------------


def _channel_slices(module: nn.Module, side: str) -> Iterable[tuple[torch.Tensor, int]]:
    """(parameter, channel dim) pairs that a channel owns in `module` on the given side."""
    for pname in ("weight", "bias"):
        p = getattr(module, pname, None)
        if not isinstance(p, nn.Parameter):
            continue
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            if side == "out" or depthwise:
                yield p, 0
            elif pname == "weight":
                yield p, 1
        elif side == "out" and p.dim() >= 1:  # norms, PReLU: one entry per channel
            yield p, 0


def compute_scores(
    model: nn.Module,
    analysis: GroupAnalysis,
    criterion: str,
    calibration: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
    params: dict | None = None,
) -> dict[str, np.ndarray]:
    """Score every channel of every group; returns group id -> scores (float64, one per channel)."""
    crit = get_criterion(criterion)
    if CHANNEL not in crit.granularities:
        raise HwpruneError(f"criterion '{criterion}' does not score channels (it scores: {crit.granularities})")
    p = _params(crit, params)
    loss_fn = loss_fn or F.cross_entropy
    if crit.unit is not None:
        if crit.needs_data and not calibration:
            _collect(crit, model, calibration, loss_fn, {})  # raises the no-data error
        return crit.unit(model, analysis, calibration, loss_fn, p)
    modules = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    got = _collect(crit, model, calibration, loss_fn, modules)
    gen = torch.Generator().manual_seed(seed)

    scores: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for g in analysis.groups:
            total = torch.zeros(g.size, dtype=torch.float64)
            for dep, idxs in analysis.tp_groups[g.id]:
                module = dep.target.module
                if not isinstance(module, nn.Module):
                    continue
                side = "out" if analysis.graph.is_out_channel_pruning_fn(dep.handler) else "in"
                root_idxs = torch.as_tensor(dep_root_idxs(dep, idxs, analysis.tp_groups[g.id]))
                local = torch.as_tensor(list(idxs))
                for prm, dim in _channel_slices(module, side):
                    if prm.shape[dim] <= int(local.max()):
                        continue
                    xnorm = got.xnorm.get(module) if prm is getattr(module, "weight", None) else None
                    st = Stats(got.grad.get(prm), got.grad_sq.get(prm), xnorm, gen)
                    if crit.needs_grad and st.grad is None and st.grad_sq is None:
                        continue
                    w = prm.detach().index_select(dim, local.to(prm.device)).double()
                    per = crit.element(w, st.select(dim, local), p)
                    per = per.transpose(0, dim).reshape(len(local), -1).sum(1).cpu()
                    total.index_add_(0, root_idxs, per)
            if crit.finish is not None:
                total = crit.finish(total, p)
            scores[g.id] = total.numpy()
    return scores


def dep_root_idxs(dep, idxs, group) -> list[int]:
    """Indices of the root channels that `idxs` of this dependency map back to (concat/split aware)."""
    for item in group.items:
        if item.dep is dep:
            return list(item.root_idxs)
    return list(idxs)


def normalized(scores: dict[str, np.ndarray], criterion: str) -> dict[str, np.ndarray]:
    """Scores made comparable across groups (see `Criterion.comparable`)."""
    if get_criterion(criterion).comparable:
        return scores
    return {k: v / max(float(v.mean()), 1e-12) for k, v in scores.items()}
