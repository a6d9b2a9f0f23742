"""Stage 9: write the output directory (model/, plan.json, report.json, report.md) atomically."""

from __future__ import annotations

from pathlib import Path

from hwprune.core.budget import format_amount
from hwprune.core.errors import HwpruneError
from hwprune.export.model import atomic_directory, write_model
from hwprune.report.schema import Latency, Report


def _ms(lat: Latency) -> str:
    return f"{lat.median_ms:.3f} ± {lat.iqr_ms / 2:.3f}"


def _acc(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def summary_rows(r: Report) -> list[tuple[str, str, str]]:
    d, p = r.dense, r.pruned
    return [
        ("latency, ms (median ± IQR/2)", _ms(d.latency), _ms(p.latency)),
        ("speedup (t_dense / t_pruned)", "1.00x", f"{r.speedup:.2f}x"),
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
        f"pruned {format_amount(b.kind, b.pruned)} ({b.used:.0%} of the limit) "
        f"— **{'met' if b.met else 'NOT met'}**"
        for b in r.budgets
    ]


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
    return "\n".join(f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows)


def markdown(r: Report) -> str:
    b = r.budget
    fp = r.fingerprint
    settings = r.settings
    lines = [
        f"# hwprune report: {r.model}",
        "",
        f"Budget **{b.text}** on target `{settings['target']['name']}`: **{'met' if b.met else 'NOT met'}**.",
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
    if r.pruned.accuracy_oneshot is not None:
        lines.append(f"One-shot accuracy before fine-tuning: {_acc(r.pruned.accuracy_oneshot)}.")
    t = r.latency_table
    if t:
        lines.append(
            f"Latency table: {t.entries_measured} entries measured, {t.cache_hits} reused from `{t.cache}` "
            f"({t.seconds:.1f} s)."
        )
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
        "Latency: median and IQR of ≥20 interleaved calls (dense A, pruned B, A, B, …) after warm-up.",
        "",
    ]
    return "\n".join(lines)


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
        (tmp / "report.json").write_text(result.report.to_json())
        (tmp / "report.md").write_text(markdown(result.report))
    return out
