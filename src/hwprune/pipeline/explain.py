"""`hwprune explain`: why a pruned model is (not) faster on a target, from measurements.

For the dense model: each timed layer's share of the latency (the measured latency table), whether it is
compute-, memory- or overhead-bound at this batch size, how many channels must go before its time takes a
step down, and the ideal speedup (MACs) against what the target delivers (every group at its narrowest
width, measured interleaved with the dense model). For a plan: its realised/ideal speedup and the layers
that lost MACs without losing latency. Then concrete advice.

Bound classes come from an empirical roofline of the model's own layers (Williams et al., "Roofline", CACM
2009): the peak attained GFLOP/s and GB/s over its layers stand for the roofs; a layer is overhead-bound
when its time is near the per-call floor (the cheapest entry of its table) or its curve is flat (its
narrowest width keeps most of its time), else compute- or memory-bound by which roof it is nearer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hwprune.apply.channels import apply_plan
from hwprune.core.errors import HwpruneError
from hwprune.core.modules import macs_params
from hwprune.cost.curves import STEP_TOLERANCE, Profiler
from hwprune.cost.model import CostModel, uniform_widths
from hwprune.groups.analysis import GroupAnalysis, LayerInfo, analyze
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.timing import latency_estimate, ratio_estimate
from hwprune.plan.plan import Plan, make_plan

#: A layer whose dense time is below this many times the per-call floor (the cheapest entry of the model's
#: table: a kernel call that does almost no work) is overhead-bound.
OVERHEAD_FLOOR = 2.0
#: ... and so is one whose narrowest width keeps this share of its dense time (a flat curve: cutting channels
#: does not cut its time).
FLAT = 0.7
#: The narrowest plan measured: every group at min_keep (the default --min-keep, 10%).
NARROW = 0.1
#: A plan's layer "lost MACs without losing latency" when it keeps at most this share of its MACs ...
WASTED_MACS = 0.8
#: ... and at least this share of its table time.
WASTED_TIME = 0.95
BYTES = 4  # float32


@dataclass
class LayerFigures:
    name: str
    kind: str
    #: The group whose width moves this layer's time (its output group; the classifier's input group).
    group: str | None
    channels: int
    ms: float
    share: float
    macs: int
    gflops: float
    gbps: float
    bound: str
    #: Channels of its output group to cut before its time drops by more than 5% (None: never, down to 10%).
    cut_for_step: int | None
    ms_after_step: float | None
    #: Its time at the narrowest width, as a share of its dense time.
    narrow_share: float


@dataclass
class Narrowest:
    keep: float
    ratio: float
    ratio_ci: list[float]
    macs_ratio: float
    ideal_speedup: float
    delivered_speedup: float
    #: Share of the narrowest model's measured time outside the table's layers (1 - layer sum / measured).
    outside_share: float


@dataclass
class PlanFigures:
    path: str
    macs_ratio: float
    ideal_speedup: float
    ratio: float
    ratio_ci: list[float]
    realised_speedup: float
    #: Realised speedup / ideal speedup.
    efficiency: float
    #: Layers that kept <= 80% of their MACs and >= 95% of their table time: (name, MACs kept, time kept).
    wasted: list[list] = field(default_factory=list)


@dataclass
class Explanation:
    model: str
    target: str
    batch_size: int | None
    dense_ms: float
    dense_ci_ms: list[float]
    layer_sum_ms: float
    #: Share of the dense latency outside the timed conv/linear layers (BN, activations, pooling, the framework).
    outside_share: float
    peak_gflops: float
    peak_gbps: float
    floor_ms: float
    #: Share of the dense latency in layers of each class (compute, memory, overhead) and outside them.
    bound_shares: dict[str, float]
    layers: list[LayerFigures]
    narrowest: Narrowest
    budget: float | None = None
    reachable: bool | None = None
    plan: PlanFigures | None = None
    advice: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def layer_macs(la: LayerInfo, c_in: int, c_out: int) -> int:
    """Multiply-accumulates of a conv/linear layer at widths (c_in, c_out), from its dense output size."""
    per_out = la.output_numel / max(la.out_channels, 1)  # output elements per channel (batch x spatial)
    k = int(np.prod(la.kernel_size)) if la.kernel_size else 1
    fan_in = k if la.depthwise else k * c_in // max(la.groups, 1)
    return int(per_out * c_out * fan_in)


def _bytes(la: LayerInfo) -> float:
    """Input, output and weights of the dense layer, float32."""
    k = int(np.prod(la.kernel_size)) if la.kernel_size else 1
    weights = la.out_channels * k * (1 if la.depthwise else la.in_channels // max(la.groups, 1))
    return BYTES * (int(np.prod(la.input_shape)) + la.output_numel + weights)


def step_group(cost: CostModel, la: LayerInfo) -> str | None:
    """The group whose width moves the layer along its curve: its output group, else (the classifier) its input's."""
    if la.out_group in cost.sizes:
        return la.out_group
    return next((g for g in la.in_groups if g in cost.sizes), None)


def _step(cost: CostModel, la: LayerInfo, analysis: GroupAnalysis) -> tuple[int | None, float | None, float]:
    """(channels to cut for a step, time after it (s), narrowest time / dense time) along `step_group`."""
    gid = step_group(cost, la)
    curve = cost.base_curves[la.name]
    dense_t = curve(la.in_channels, la.out_channels)
    if gid is None:
        return None, None, 1.0
    g = analysis.group(gid)
    cut = None
    after = None
    for w in sorted(g.candidates, reverse=True):
        if w >= g.size:
            continue
        t = curve(*la.widths({gid: w}))
        if cut is None and t < (1 - STEP_TOLERANCE) * dense_t:
            cut, after = g.size - w, t
    narrow = curve(*la.widths({gid: min(g.candidates)}))
    return cut, after, narrow / dense_t if dense_t > 0 else 1.0


def _narrow_model(dense, example, analysis: GroupAnalysis, widths: dict[str, int]):
    sizes = {g.id: g.size for g in analysis.groups}
    scores = {g.id: np.linspace(1.0, 0.0, g.size) for g in analysis.groups}  # which channels: irrelevant to time
    plan = make_plan(widths, scores, sizes, analysis.multiples, units=analysis.units)
    return apply_plan(dense, example, plan)


def explain(
    dense,
    example,
    target,
    *,
    model_name: str = "model",
    budget: float | None = None,
    plan: Plan | None = None,
    plan_path: str | Path | None = None,
    cache: LatencyCache | None = None,
    min_keep: float = NARROW,
    progress: bool = True,
) -> Explanation:
    """The explanation for `dense` on `target` at `example`'s batch size (and for `plan`, when given)."""
    if budget is not None and not 0 < budget <= 1:
        raise HwpruneError(f"--budget {budget}: give the latency budget as a fraction of dense, e.g. 0.5")
    dense.eval()
    analysis = analyze(dense, example, min_keep)
    if not analysis.groups:
        raise HwpruneError(f"{model_name} has no prunable channel groups; width pruning cannot change its latency")
    profiler = Profiler(target, cache or LatencyCache(None), progress)
    cost = CostModel(analysis, profiler.build(analysis))
    floor = min(float(np.min(c.grid)) for c in cost.base_curves.values())

    narrow_w = uniform_widths(analysis, min_keep)
    narrow = _narrow_model(dense, example, analysis, narrow_w)
    td, tn = target.time_models([dense, narrow], example, final=True)
    dense_e, r = latency_estimate(td), ratio_estimate(tn, td)
    t_dense = td.median

    layers, peak_gflops, peak_gbps = _layers(cost, analysis, t_dense, floor)
    layer_sum = sum(x.ms for x in layers) / 1e3
    shares = {k: sum(x.share for x in layers if x.bound == k) for k in ("compute", "memory", "overhead")}
    shares["outside the layers"] = max(0.0, 1 - layer_sum / t_dense)
    d_macs, n_macs = macs_params(dense, example)[0], macs_params(narrow, example)[0]
    narrow_sum = cost.layer_sum(narrow_w)
    narrowest = Narrowest(
        keep=min_keep,
        ratio=r.value,
        ratio_ci=[r.low, r.high],
        macs_ratio=n_macs / d_macs,
        ideal_speedup=d_macs / n_macs,
        delivered_speedup=1 / r.value,
        outside_share=max(0.0, 1 - narrow_sum / (r.value * t_dense)),
    )
    ex = Explanation(
        model=model_name,
        target=getattr(target, "name", type(target).__name__),
        batch_size=int(example.shape[0]) if hasattr(example, "shape") else None,
        dense_ms=t_dense * 1e3,
        dense_ci_ms=[dense_e.low * 1e3, dense_e.high * 1e3],
        layer_sum_ms=layer_sum * 1e3,
        outside_share=shares["outside the layers"],
        peak_gflops=peak_gflops,
        peak_gbps=peak_gbps,
        floor_ms=floor * 1e3,
        bound_shares=shares,
        layers=layers,
        narrowest=narrowest,
        budget=budget,
        reachable=None if budget is None else r.value <= budget,
    )
    if plan is not None:
        ex.plan = _plan_figures(dense, example, target, analysis, cost, plan, str(plan_path or "plan"), d_macs)
    ex.advice = advice(ex)
    return ex


def _layers(cost: CostModel, analysis: GroupAnalysis, t_dense: float, floor: float):
    """Every timed layer's figures and bound class, and the roofs (peak attained GFLOP/s and GB/s)."""
    rows = []
    for la in analysis.layers:
        t = cost.base_curves[la.name](la.in_channels, la.out_channels)
        macs = layer_macs(la, la.in_channels, la.out_channels)
        cut, after, narrow_share = _step(cost, la, analysis)
        rows.append((la, t, macs, cut, after, narrow_share))
    timed = [x for x in rows if x[1] > 0]
    peak_gflops = max(2 * m / t for _, t, m, *_ in timed) / 1e9
    peak_gbps = max(_bytes(la) / t for la, t, *_ in timed) / 1e9
    layers = []
    for la, t, macs, cut, after, narrow_share in rows:
        gflops, gbps = 2 * macs / t / 1e9 if t else 0.0, _bytes(la) / t / 1e9 if t else 0.0
        if t < OVERHEAD_FLOOR * floor or narrow_share >= FLAT:
            bound = "overhead"
        else:
            bound = "compute" if gflops / peak_gflops >= gbps / peak_gbps else "memory"
        layers.append(
            LayerFigures(
                name=la.name,
                kind=la.kind,
                group=step_group(cost, la),
                channels=cost.sizes.get(step_group(cost, la), la.out_channels),
                ms=t * 1e3,
                share=t / t_dense,
                macs=macs,
                gflops=gflops,
                gbps=gbps,
                bound=bound,
                cut_for_step=cut,
                ms_after_step=after * 1e3 if after is not None else None,
                narrow_share=narrow_share,
            )
        )
    return layers, peak_gflops, peak_gbps


def _plan_figures(dense, example, target, analysis, cost: CostModel, plan: Plan, path: str, d_macs: int):
    widths = plan.widths()
    unknown = set(widths) - set(cost.sizes)
    if unknown:
        raise HwpruneError(f"--plan {path}: groups {sorted(unknown)[:3]} are not groups of this model")
    pruned = apply_plan(dense, example, plan)
    td, tp_ = target.time_models([dense, pruned], example, final=True)
    r = ratio_estimate(tp_, td)
    macs = macs_params(pruned, example)[0]
    wasted = []
    for la in analysis.layers:
        c_in, c_out = la.widths(widths)
        m0, m1 = layer_macs(la, la.in_channels, la.out_channels), layer_macs(la, c_in, c_out)
        curve = cost.base_curves[la.name]
        t0, t1 = curve(la.in_channels, la.out_channels), curve(c_in, c_out)
        if m0 and t0 and m1 / m0 <= WASTED_MACS and t1 / t0 >= WASTED_TIME:
            wasted.append([la.name, round(m1 / m0, 3), round(t1 / t0, 3)])
    ideal = d_macs / macs
    return PlanFigures(
        path=path,
        macs_ratio=macs / d_macs,
        ideal_speedup=ideal,
        ratio=r.value,
        ratio_ci=[r.low, r.high],
        realised_speedup=1 / r.value,
        efficiency=(1 / r.value) / ideal,
        wasted=wasted,
    )


def advice(ex: Explanation) -> list[str]:
    """What the figures mean for pruning on this target, and what would help."""
    out = []
    n = ex.narrowest
    gpu = "cuda" in ex.target
    outside = ex.bound_shares["outside the layers"]
    overhead = ex.bound_shares["overhead"] + outside
    if ex.budget is not None and not ex.reachable:
        out.append(
            f"latency={ex.budget:g} is out of reach of width pruning on this target: with every group at "
            f"{n.keep:.0%} of its channels the model still measures {n.ratio:.2f} [{n.ratio_ci[0]:.2f}, "
            f"{n.ratio_ci[1]:.2f}] of dense, while its MACs fall to {n.macs_ratio:.2f} (ideal {n.ideal_speedup:.1f}x, "
            f"delivered {n.delivered_speedup:.2f}x)."
        )
    elif ex.budget is not None:
        out.append(
            f"latency={ex.budget:g} is within reach: every group at {n.keep:.0%} measures {n.ratio:.2f} of dense "
            f"[{n.ratio_ci[0]:.2f}, {n.ratio_ci[1]:.2f}]; `hwprune prune --budget latency={ex.budget:g}` finds the "
            "widest plan under it."
        )
    if overhead >= 0.4:
        out.append(
            f"{overhead:.0%} of the dense latency does not shrink with width: {outside:.0%} "
            f"is outside the conv/linear layers (BN, activations, pooling, framework calls) and "
            f"{ex.bound_shares['overhead']:.0%} in overhead-bound layers (near the {ex.floor_ms * 1e3:.0f} us per-call "
            f"floor, or flat curves). At {n.keep:.0%} width, {n.outside_share:.0%} of what is left is outside the "
            "layers. This is a small, overhead-bound model at this batch size: removing channels removes little time."
        )
    if ex.batch_size == 1 and (overhead >= 0.3 or gpu):
        out.append(
            ("A GPU at batch 1 is launch-bound: kernels finish faster than they are launched. " if gpu else "")
            + "A larger batch (--batch-size 8 or more, if the deployment batches requests) makes compute "
            "dominate, and width pruning then converts MACs into time."
        )
    comp = ex.bound_shares["compute"]
    if comp >= 0.5:
        out.append(
            f"{comp:.0%} of the latency is in compute-bound layers: width pruning pays here (MACs and time fall "
            "together, by steps: see the channels to cut per layer)."
        )
    if n.delivered_speedup < 0.5 * n.ideal_speedup:
        out.append(
            f"MACs overstate the gain {n.ideal_speedup / n.delivered_speedup:.1f}-fold at {n.keep:.0%} width: "
            "budget on measured latency (`--budget latency=...`), not on MACs."
        )
    if ex.plan is not None and ex.plan.wasted:
        out.append(
            f"{len(ex.plan.wasted)} layer(s) of the plan lost MACs but not latency (below a step): give their "
            "channels back, or cut to the next step (the allocator `hw` does this from the table)."
        )
    out.append(
        "What helps beyond width: fused runtimes (--target cpu-ort folds BN and activations into the convs), "
        "removing whole blocks (--granularity block, depth pruning: fewer layers, fewer per-call costs), and int8 "
        "(--target cpu-ort-int8). Masks on dense kernels (--granularity unstructured or N:M) do not run faster on "
        "this target: the kernels stay dense."
    )
    return out


def text(ex: Explanation, top: int = 15) -> str:
    """The explanation as terminal text (`hwprune explain`)."""
    n = ex.narrowest
    lines = [
        f"{ex.model} on {ex.target}, batch {ex.batch_size}: dense {ex.dense_ms:.3f} ms "
        f"[{ex.dense_ci_ms[0]:.3f}, {ex.dense_ci_ms[1]:.3f}] (95% CI)",
        f"timed conv/linear layers (latency table) sum to {ex.layer_sum_ms:.3f} ms; {ex.outside_share:.0%} of the "
        "dense latency is outside them",
        f"roofline from the model's own layers: peak {ex.peak_gflops:.1f} GFLOP/s, {ex.peak_gbps:.1f} GB/s; "
        f"per-call floor {ex.floor_ms * 1e3:.0f} us",
        "share of dense latency: "
        + ", ".join(
            f"{k}-bound {v:.0%}" if k != "outside the layers" else f"{k} {v:.0%}" for k, v in ex.bound_shares.items()
        ),
        "",
        f"{'layer':<34} {'share':>6} {'ms':>8} {'GFLOP/s':>8} {'GB/s':>7} {'bound':>9}  to the next step",
    ]
    for x in sorted(ex.layers, key=lambda x: -x.ms)[:top]:
        step = (
            f"cut {x.cut_for_step} of {x.channels} ch{'' if x.group == x.name else ' of ' + str(x.group)} -> "
            f"{x.ms_after_step:.3f} ms"
            if x.cut_for_step is not None
            else f"no step down to 10% ({x.narrow_share:.0%} kept)"
        )
        lines.append(
            f"{x.name[:34]:<34} {x.share:>6.1%} {x.ms:>8.3f} {x.gflops:>8.1f} {x.gbps:>7.1f} {x.bound:>9}  {step}"
        )
    if len(ex.layers) > top:
        rest = sorted(ex.layers, key=lambda x: -x.ms)[top:]
        lines.append(f"... {len(rest)} more layers, {sum(x.share for x in rest):.1%} of the latency (--json lists all)")
    lines += [
        "",
        f"every group at {n.keep:.0%}: MACs {n.macs_ratio:.2f} of dense (ideal {n.ideal_speedup:.1f}x), measured "
        f"{n.ratio:.2f} [{n.ratio_ci[0]:.2f}, {n.ratio_ci[1]:.2f}] of dense (delivered {n.delivered_speedup:.2f}x); "
        f"{n.outside_share:.0%} of what is left is outside the layers",
    ]
    if ex.plan is not None:
        p = ex.plan
        lines.append(
            f"plan {p.path}: MACs {p.macs_ratio:.2f} of dense (ideal {p.ideal_speedup:.2f}x), measured {p.ratio:.3f} "
            f"[{p.ratio_ci[0]:.3f}, {p.ratio_ci[1]:.3f}] of dense ({p.realised_speedup:.2f}x): "
            f"{p.efficiency:.0%} of the ideal"
        )
        for name, m, t in p.wasted:
            lines.append(f"  {name}: kept {m:.0%} of its MACs and {t:.0%} of its time")
        if not p.wasted:
            lines.append("  no layer lost MACs without losing latency")
    lines += ["", "advice:"] + [f"- {a}" for a in ex.advice]
    return "\n".join(lines)
