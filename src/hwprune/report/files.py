"""Stage 9: write the output directory (model/, plan.json, report.json, report.md) atomically."""

from __future__ import annotations

from pathlib import Path

from hwprune.core.budget import format_amount
from hwprune.core.errors import HwpruneError
from hwprune.export.model import atomic_directory, write_model
from hwprune.export.pretrained import is_transformers, write_pretrained
from hwprune.report.schema import Deployment, Latency, Report


def _ms(lat: Latency) -> str:
    if lat.ci_low_ms is None:
        return f"{lat.median_ms:.3f}"
    return f"{lat.median_ms:.3f} [{lat.ci_low_ms:.3f}, {lat.ci_high_ms:.3f}]"


FAST_LINE = (
    "TEST-MODE TIMING (HWPRUNE_TIMING=fast: 3 calls per figure): these latencies check the plumbing, "
    "they are not measurements."
)


def header_lines(r: Report) -> list[str]:
    """What must be read before any figure: test-mode timing, an unstable machine."""
    lines = [FAST_LINE] if r.timing == "fast" else []
    if r.machine is not None and r.machine.warnings:
        what = "UNRELIABLE FIGURES" if not r.machine.stable else "Machine warning"
        lines.append(f"{what}: " + "; ".join(r.machine.warnings) + ".")
    return lines


def _acc(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def summary_rows(r: Report) -> list[tuple[str, str, str]]:
    d, p = r.dense, r.pruned
    return [
        ("latency, ms (median [95% CI])", _ms(d.latency), _ms(p.latency)),
        (
            "speedup (t_dense / t_pruned)",
            "1.00x",
            f"{r.speedup:.2f}x [{r.speedup_ci[0]:.2f}, {r.speedup_ci[1]:.2f}]",
        ),
        ("accuracy", _acc(d.accuracy), _acc(p.accuracy)),
        ("MACs", f"{d.macs / 1e6:.1f} M", f"{p.macs / 1e6:.1f} M ({r.macs_ratio or 0:.2f}x)"),
        ("parameters", f"{d.params / 1e6:.3f} M", f"{p.params / 1e6:.3f} M"),
        ("size", f"{d.size_bytes / 2**20:.2f} MiB", f"{p.size_bytes / 2**20:.2f} MiB ({r.compression:.2f}x)"),
        (
            "memory (weights + peak activation)",
            format_amount("memory", d.memory_bytes),
            format_amount("memory", p.memory_bytes),
        ),
    ] + (
        [("energy per inference", format_amount("energy", d.energy_j), format_amount("energy", p.energy_j))]
        if d.energy_j is not None
        else []
    )


def budget_lines(r: Report) -> list[str]:
    """One line per budget: its limit, the pruned model's figure, met or not."""
    return [
        f"- `{b.text}`: limit {format_amount(b.kind, b.limit)}, "
        f"pruned {format_amount(b.kind, b.pruned)}{_interval(b)} ({b.used:.0%} of the limit) — **{b.verdict}**"
        for b in r.budgets
    ]


def _interval(b) -> str:
    if b.low is None or b.high is None or b.low == b.high:
        return ""
    return f" [95% CI {format_amount(b.kind, b.low)} - {format_amount(b.kind, b.high)}]"


def _loop_rows(r: Report) -> list[str]:
    kinds = [b.kind for b in r.budgets]
    head = "| iter | " + " | ".join(f"{k}: aim → predicted → measured (of budget)" for k in kinds) + " |"
    rows = [head, "|---:|" + "---|" * len(kinds)]
    for h in r.loop:
        figs = [(k, h.budgets[k]) for k in kinds]
        cells = [
            f"{format_amount(k, f.aim)} → {format_amount(k, f.predicted)} → "
            f"{format_amount(k, f.measured)} ({f.used:.0%})"
            for k, f in figs
        ]
        rows.append(f"| {h.iteration} | " + " | ".join(cells) + " |")
    return rows


def text_table(r: Report) -> str:
    rows = [("", "dense", "pruned")] + summary_rows(r)
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    table = [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows]
    return "\n".join(header_lines(r) + table)


def markdown(r: Report) -> str:
    b = r.budget
    fp = r.fingerprint
    settings = r.settings
    lines = [
        *[f"**{line}**\n" for line in header_lines(r)],
        f"# hwprune report: {r.model}",
        "",
        f"Budget **{b.text}** on target `{settings['target']['name']}`: **{b.verdict}**.",
        "",
        *budget_lines(r),
        "",
        f"Allocator `{settings['loop']['allocator']}`, criterion `{settings['criterion']}`, "
        f"input {r.input_shape}, fine-tuning epochs {settings['finetune']['epochs']}.",
        "",
        "| | dense | pruned |",
        "|---|---:|---:|",
        *[f"| {a} | {c1} | {c2} |" for a, c1, c2 in summary_rows(r)],
        "",
    ]
    if r.predicted_latency_ms is not None:
        lines.append(
            f"Predicted latency {r.predicted_latency_ms:.3f} ms vs measured {r.measured_latency_ms:.3f} ms: "
            f"error {100 * r.prediction_error:+.1f}% (both relative to the dense latency measured when planning, "
            f"{r.dense_latency_at_planning_ms:.3f} ms: predicted {r.predicted_ratio:.3f}x, measured "
            f"{r.latency_ratio:.3f}x, so drift of the machine's speed between the two cancels)."
        )
    m = r.measurement
    lines.append(
        f"Final measurement: {m.rounds} interleaved rounds (dense, pruned, dense, ...); pruned/dense ratio "
        f"{r.latency_ratio:.3f} [{r.latency_ratio_ci[0]:.3f}, {r.latency_ratio_ci[1]:.3f}], ±{m.half_width:.1%} "
        f"({m.estimator} of the per-round ratios, {m.confidence:.0%} moving-block bootstrap interval; "
        f"tolerance {'±' + format(m.tolerance, '.0%') if m.tolerance else 'none'}, stopped on {m.stopped})."
    )
    if r.pruned.accuracy_oneshot is not None:
        lines.append(f"One-shot accuracy before fine-tuning: {_acc(r.pruned.accuracy_oneshot)}.")
    t = r.latency_table
    if t:
        lines.append(
            f"Latency table: {t.entries_measured} entries measured, {t.cache_hits} reused from `{t.cache}` "
            f"({t.seconds:.1f} s)."
        )
    lines += _deployment_lines(r.deployment)
    lines += ["", "## Closed loop (aim → predicted → measured)", "", *_loop_rows(r), ""]
    lines += [
        "## Width per group",
        "",
        "| group (root layer) | dense | pruned | kept |",
        "|---|---:|---:|---:|",
        *[f"| `{g.id}` | {g.size} | {g.width} | {g.width / g.size:.0%} |" for g in r.groups],
        "",
        "## Machine",
        "",
        f"{fp['cpu']}, {fp['physical_cores']} physical / {fp['logical_cores']} logical cores, {fp['threads']} threads, "
        f"{fp['runtime']} torch {fp['torch']}, {fp['dtype']}.",
        *_machine_lines(r),
        "",
    ]
    return "\n".join(lines)


def _deployment_lines(d: Deployment | None) -> list[str]:
    if d is None:
        return []
    mode = f", {d.int8_mode}" if d.int8_mode else ""
    lines = [
        "",
        f"## Deployed: `{d.file}` ({d.format} {d.dtype}{mode})",
        "",
        "| | dense fp32 | pruned fp32 | pruned deployed |",
        "|---|---:|---:|---:|",
        f"| latency (median, ms) | {d.dense_fp32_ms:.3f} | {d.pruned_fp32_ms:.3f} | {d.deployed_ms:.3f} "
        f"[{d.deployed_ci_ms[0]:.3f}, {d.deployed_ci_ms[1]:.3f}] |",
        f"| size on disk | | {d.fp32_size_bytes / 1e6:.2f} MB | {d.size_bytes / 1e6:.2f} MB |",
    ]
    if d.metric_fp32 is not None:
        lines.append(f"| metric | | {_acc(d.metric_fp32)} | {_acc(d.metric_deployed)} |")
    lines += [
        "",
        f"Speedup over the dense fp32 model: **{d.speedup:.2f}x** [{d.speedup_ci[0]:.2f}, {d.speedup_ci[1]:.2f}]; "
        f"quantization alone {d.quantization_speedup:.2f}x [{d.quantization_speedup_ci[0]:.2f}, "
        f"{d.quantization_speedup_ci[1]:.2f}] (the three graphs timed interleaved, {d.rounds} rounds, 95% intervals "
        "of the per-round ratios).",
        f"Parity on {d.parity_on}: max abs difference {d.max_abs_diff:.3g} (outputs up to {d.output_scale:.3g})"
        + (f", top-1 agreement {d.agreement:.2%}" if d.agreement is not None else "")
        + f". Calibrated on {d.calibration}.",
    ]
    return lines


def _machine_lines(r: Report) -> list[str]:
    m = r.machine
    if m is None:
        return []
    parts = []
    if m.steal_fraction is not None:
        parts.append(f"CPU steal {m.steal_fraction:.1%}")
    if m.freq_mhz_low is not None:
        parts.append(f"clock {m.freq_mhz_low:.0f}-{m.freq_mhz_high:.0f} MHz")
    if m.dense_drift is not None:
        parts.append(f"dense model drift {m.dense_drift:.1%} over {len(m.dense_medians_ms)} measurements")
    state = "steady" if m.stable else "NOT steady"
    return [f"During the run ({m.seconds:.0f} s): " + (", ".join(parts) or "no counters") + f"; {state}."]


def prepare_out(out: str | Path, overwrite: bool = False) -> Path:
    """Check `out` before a run writes there: new, empty, or (with `overwrite=True`) an earlier hwprune output.

    Anything else is never replaced: a user's directory that happens to share the name keeps its files.
    """
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return out
    if not out.is_dir() or not (out / "report.json").exists():
        raise HwpruneError(f"--out {out} exists and is not an hwprune output directory; choose another path")
    if not overwrite:
        raise HwpruneError(f"{out} holds an earlier hwprune output; pass overwrite=True to replace it")
    return out


def _pretrained(result, tmp: Path) -> None:
    """A transformers model also goes to pretrained/ (plain `from_pretrained`) when one config can hold its
    widths; otherwise the report says why and model/ (hwprune.load) is the way to load it."""
    if not is_transformers(result.model):
        return
    try:
        write_pretrained(result.model, tmp / "pretrained")
        result.report.notes.append("pretrained/ loads with plain transformers from_pretrained (no hwprune needed)")
    except HwpruneError as e:
        result.report.notes.append(f"no pretrained/ directory: {e}")


def write_outputs(out: str | Path, result, overwrite: bool = False) -> Path:
    """model/, plan.json, report.json, report.md: written to a temporary sibling, then renamed into place.

    An earlier hwprune output at `out` is replaced only with `overwrite=True` (`hwprune prune --out` passes it).
    """
    out = prepare_out(out, overwrite)
    with atomic_directory(out) as tmp:
        shape = result.report.input_shape
        (tmp / "model").mkdir()
        write_model(
            result.model,
            tmp / "model",
            result.source,
            {"input_shape": shape[1:] if shape else None, "plan": "../plan.json"},
        )
        result.plan.save(tmp / "plan.json")
        _pretrained(result, tmp)
        (tmp / "report.json").write_text(result.report.to_json())
        (tmp / "report.md").write_text(markdown(result.report))
        for name, data in getattr(result, "files", {}).items():
            (tmp / name).write_bytes(data)
    return out
