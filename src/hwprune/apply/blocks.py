"""Residual blocks, physically removed: finding them, block criteria, scoring and replacing by identity.

A removable block is a module whose own forward adds its unchanged input to a function of that input
(`x + f(x)`, possibly followed by same-shape ops such as ResNet's final ReLU), called once with equal
input and output shapes. Removing it replaces it by `nn.Identity` (Veit et al., "Residual networks behave
like ensembles of relatively shallow networks", NeurIPS 2016, drop ResNet blocks this way). A block whose
shortcut is transformed (a `downsample` projection) or whose shape changes is never a candidate. Blocks
are scored by block-level criteria (`random`, `loss-change`: the block replaced by identity) or by the
mean of an element criterion of `hwprune.importance` over the block's weights.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from hwprune.apply.common import calibration_batches, check_ratio, mean_loss, set_module
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import param_count, run_hooked
from hwprune.core.registry import Registry
from hwprune.groups.analysis import PRUNABLE_TYPES
from hwprune.importance import BLOCK, CRITERIA, Stats, collect_stats, resolve_params

_ADDS = {operator.add, operator.iadd, torch.add}


class _OneLevel(fx.Tracer):
    """Trace a module's own forward only: every submodule is a leaf (a nested block's add is not ours)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def has_residual_add(module: nn.Module) -> bool:
    """True when the module's own forward adds its unchanged input to a function of that input,
    and its output is computed from that sum. Modules that fx cannot trace count as False."""
    try:
        graph = _OneLevel().trace(module)
    except Exception:  # data-dependent control flow, unsupported call signatures: not a block we can reason about
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    x = inputs[0]
    depends = {x}  # nodes computed from the input
    for n in graph.nodes:
        if n.op != "placeholder" and any(a in depends for a in n.all_input_nodes):
            depends.add(n)
    residual = set()
    for n in graph.nodes:
        is_add = (n.op == "call_function" and n.target in _ADDS) or (
            n.op == "call_method" and n.target in ("add", "add_")
        )
        if is_add and len(n.args) >= 2:
            a, b = n.args[0], n.args[1]
            if (a is x and b in depends and b is not x) or (b is x and a in depends and a is not x):
                residual.add(n)
    if not residual:
        return False
    # The output must be reached from a residual add (not only from a side branch).
    reached = set(residual)
    for n in graph.nodes:
        if any(a in reached for a in n.all_input_nodes):
            reached.add(n)
    return any(n.op == "output" for n in reached)


@dataclass
class BlockInfo:
    """A residual block that may be replaced by nn.Identity."""

    name: str
    kind: str
    params: int
    shape: list[int]  # input (= output) shape in the example forward


def find_blocks(model: nn.Module, example_inputs) -> list[BlockInfo]:
    """Removable residual blocks, in execution order (innermost when blocks nest).

    A block is called once with one tensor, returns a tensor of the same shape, has a residual add of its
    input in its own forward (`has_residual_add`). Called once with equal shapes, it can be replaced by
    nn.Identity without changing any shape the rest of the model sees.
    """
    names = {m: n for n, m in model.named_modules()}
    calls: dict[nn.Module, list] = {}

    def hook(mod, args, out):
        calls.setdefault(mod, []).append((args, out))

    run_hooked(model, example_inputs, [m for m in model.modules() if m is not model], hook)
    cands = []
    for m, seen in calls.items():
        if len(seen) != 1:
            continue
        args, out = seen[0]
        if len(args) != 1 or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
            continue
        if args[0].shape != out.shape or isinstance(m, nn.Identity):
            continue
        if has_residual_add(m):
            cands.append(m)
    # Innermost: a block containing another block is not itself a unit (ResNet stages of blocks are not).
    inner = [m for m in cands if not any(o is not m and any(o is s for s in m.modules()) for o in cands)]
    order = list(calls)
    inner.sort(key=order.index)
    return [BlockInfo(names[m], type(m).__name__, param_count(m), list(calls[m][0][0][0].shape)) for m in inner]


BlockScorer = Callable[[nn.Module, list[BlockInfo], dict], list[float]]
BLOCK_CRITERIA: Registry[BlockScorer] = Registry("block criterion", "--criterion")


def register_block_criterion(name: str, description: str):
    """Decorator: a block-level criterion `(model, blocks, ctx) -> scores` (higher = keep)."""

    def wrap(fn: BlockScorer) -> BlockScorer:
        return BLOCK_CRITERIA.register(name, fn, description)

    return wrap


def block_criteria() -> dict[str, str]:
    """Every name `prune_blocks` accepts: block-level criteria and hwprune.importance's element criteria."""
    out = {n: BLOCK_CRITERIA.describe(n) for n in BLOCK_CRITERIA}
    for n, c in CRITERIA.items():
        if BLOCK in c.granularities and c.element is not None:
            out.setdefault(n, f"mean over the block's weights of: {c.description}")
    return dict(sorted(out.items()))


def _check_block_criterion(criterion: str) -> None:
    if criterion not in block_criteria():
        raise HwpruneError(f"unknown block criterion '{criterion}'; choose one of: {', '.join(block_criteria())}")


@register_block_criterion("random", "one uniform random score per block (a baseline)")
def _random_blocks(model, blocks, ctx):
    return torch.rand(len(blocks), generator=ctx["generator"], dtype=torch.float64).tolist()


@register_block_criterion(
    "loss-change",
    "increase of the calibration loss when the block alone is replaced by identity (block drop, Veit et al. 2016)",
)
def _loss_change(model, blocks, ctx):
    batches, loss_fn = ctx["batches"], ctx["loss_fn"]
    was = model.training
    model.eval()
    base = mean_loss(model, batches, loss_fn)
    out = []
    try:
        for b in blocks:
            m = model.get_submodule(b.name)
            set_module(model, b.name, nn.Identity())
            try:
                out.append(mean_loss(model, batches, loss_fn) - base)
            finally:
                set_module(model, b.name, m)
    finally:
        model.train(was)
    return out


def _element_criterion(model, blocks, ctx) -> list[float]:
    """Mean of an element criterion of `hwprune.importance` over the block's weight tensors (dim >= 2).

    Biases and norm scales are left out: BN gammas near 1 say nothing about what a block contributes, and
    the mean (not the sum) keeps wide and narrow blocks comparable. A weight whose statistic the criterion
    needs but did not get (Wanda's input norm of a packed attention projection) is skipped.
    """
    crit, p = ctx["criterion"], ctx["params"]
    layers = {m: n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    by_name = {n: m for m, n in layers.items()}
    got = collect_stats(crit, model, ctx["batches"], ctx["loss_fn"] or F.cross_entropy, by_name)
    out = []
    with torch.no_grad():
        for b in blocks:
            total, count = 0.0, 0
            for m in model.get_submodule(b.name).modules():
                for prm in m.parameters(recurse=False):
                    if prm.dim() < 2:
                        continue
                    xnorm = got.xnorm.get(m) if m in layers and prm is m.weight else None
                    st = Stats(got.grad.get(prm), got.grad_sq.get(prm), xnorm, ctx["generator"])
                    if (crit.needs_grad and st.grad is None and st.grad_sq is None) or (
                        "xnorm" in crit.needs and xnorm is None
                    ):
                        continue
                    total += float(crit.element(prm.detach().double(), st, p).sum())
                    count += prm.numel()
            out.append(total / max(count, 1))
    return out


def score_blocks(
    model: nn.Module,
    example_inputs,
    criterion: str = "loss-change",
    batches: list | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
    params: dict | None = None,
    blocks: list[BlockInfo] | None = None,
) -> tuple[list[BlockInfo], list[float]]:
    """The removable blocks and one score per block (higher = more important).

    Criteria that read data use `batches` (a list of (inputs, labels)), or self-labelled random inputs
    when none are given (as `hwprune prune` does without --data).
    """
    _check_block_criterion(criterion)
    crit = CRITERIA[criterion] if criterion not in BLOCK_CRITERIA and criterion in CRITERIA else None
    p = resolve_params(crit, params) if crit is not None else {}
    blocks = find_blocks(model, example_inputs) if blocks is None else blocks
    if not blocks:
        return [], []
    needs_data = criterion == "loss-change" or (crit is not None and crit.needs_data)
    if needs_data and not batches:
        batches = calibration_batches(model, example_inputs, seed=seed)
    ctx = {
        "batches": batches,
        "loss_fn": loss_fn,
        "criterion": crit,
        "params": p,
        "generator": torch.Generator().manual_seed(seed),
    }
    fn = BLOCK_CRITERIA.get(criterion) if criterion in BLOCK_CRITERIA else _element_criterion
    return blocks, [float(v) for v in fn(model, blocks, ctx)]


@dataclass
class BlockResult:
    name: str
    kind: str
    params: int
    score: float
    removed: bool


@dataclass
class BlockPruneInfo:
    """What `prune_blocks` removed, as plain data for the report."""

    criterion: str
    ratio: float
    removable: int
    removed: list[str]
    params_before: int
    params_after: int
    blocks: list[BlockResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def prune_blocks(
    model: nn.Module,
    example_inputs,
    criterion: str = "loss-change",
    ratio: float = 0.5,
    batches: list | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
    params: dict | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, BlockPruneInfo]:
    """Replace the `floor(ratio * removable)` lowest-scoring residual blocks by nn.Identity.

    Blocks are scored once on the dense model (one-shot, no re-scoring between removals).
    """
    check_ratio(ratio)
    _check_block_criterion(criterion)
    if not inplace:
        model = copy.deepcopy(model)
    before = param_count(model)
    blocks, scores = score_blocks(model, example_inputs, criterion, batches, loss_fn, seed, params)
    k = int(math.floor(ratio * len(blocks)))
    order = sorted(range(len(blocks)), key=lambda i: (scores[i], i))
    drop = set(order[:k])
    for i in sorted(drop):
        set_module(model, blocks[i].name, nn.Identity())
    results = [BlockResult(b.name, b.kind, b.params, scores[i], i in drop) for i, b in enumerate(blocks)]
    info = BlockPruneInfo(
        criterion, ratio, len(blocks), [blocks[i].name for i in sorted(drop)], before, param_count(model), results
    )
    return model, info
