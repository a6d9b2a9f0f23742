"""A sweep's results (`hwprune sweep`): one point per budget x allocator, as typed data, and its pages:
index.html (the accuracy-vs-measured-latency Pareto plot and the table, self-contained like report.html) and
index.md. A point that failed is a row that says so, never a dropped one."""

from __future__ import annotations

import dataclasses
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from hwprune.core.files import write_file_atomic
from hwprune.report.html import CSS, html_table, new_figure, style_axes, svg_text
from hwprune.report.schema import Report, from_dict

SWEEP_FORMAT = "hwprune-sweep/1"
#: One colour and marker per allocator, in the order given.
STYLES = [("#1f77b4", "o"), ("#ff7f0e", "s"), ("#2ca02c", "^"), ("#9467bd", "D")]


@dataclass
class SweepPoint:
    budget: float
    allocator: str
    #: "met (95% confidence)", "met on the median only", "not met" or "failed".
    status: str
    out: str | None = None
    error: str | None = None
    #: Measured pruned / dense latency (the final interleaved measurement) and its 95% interval.
    ratio: float | None = None
    ratio_ci: list[float] = field(default_factory=list)
    latency_ms: float | None = None
    latency_ci_ms: list[float] = field(default_factory=list)
    dense_ms: float | None = None
    used: float | None = None
    accuracy_dense: float | None = None
    accuracy_oneshot: float | None = None
    accuracy: float | None = None
    macs_ratio: float | None = None
    params: int | None = None
    seconds: float | None = None

    @classmethod
    def from_report(cls, budget: float, allocator: str, out: str, r: Report, seconds: float) -> SweepPoint:
        return cls(
            budget=budget,
            allocator=allocator,
            status=r.budget.verdict,
            out=out,
            ratio=r.latency_ratio,
            ratio_ci=list(r.latency_ratio_ci),
            latency_ms=r.measured_latency_ms,
            latency_ci_ms=list(r.measured_latency_ci_ms),
            dense_ms=r.dense_latency_at_planning_ms,
            used=r.budget.used,
            accuracy_dense=r.dense.accuracy,
            accuracy_oneshot=r.pruned.accuracy_oneshot,
            accuracy=r.pruned.accuracy,
            macs_ratio=r.macs_ratio,
            params=r.pruned.params,
            seconds=seconds,
        )


@dataclass
class Sweep:
    model: str
    target: str
    data: str | None
    command: str | None
    points: list[SweepPoint] = field(default_factory=list)
    format: str = SWEEP_FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> Sweep:
        return from_dict(cls, json.loads(Path(path).read_text()))


def _acc(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def table_rows(s: Sweep) -> tuple[list[str], list[list[str]]]:
    head = [
        "allocator",
        "budget",
        "status",
        "measured / dense [95% CI]",
        "latency, ms [95% CI]",
        "of limit",
        "one-shot",
        "fine-tuned",
        "MACs",
        "params",
        "time",
    ]
    rows = []
    for p in sorted(s.points, key=lambda p: (p.allocator, p.budget)):
        if p.status == "failed":
            rows.append([p.allocator, f"{p.budget:g}", "failed", p.error or "", "", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                p.allocator,
                f"{p.budget:g}",
                p.status.replace("confidence", "CI").replace("on the median only", "on the median"),
                f"{p.ratio:.3f} [{p.ratio_ci[0]:.3f}, {p.ratio_ci[1]:.3f}]",
                f"{p.latency_ms:.3f} [{p.latency_ci_ms[0]:.3f}, {p.latency_ci_ms[1]:.3f}]",
                f"{p.used:.0%}" if p.used is not None else "",
                _acc(p.accuracy_oneshot),
                _acc(p.accuracy),
                f"{p.macs_ratio:.2f}x" if p.macs_ratio is not None else "",
                f"{p.params / 1e6:.3f} M" if p.params is not None else "",
                f"{p.seconds:.0f} s" if p.seconds is not None else "",
            ]
        )
    return head, rows


def pareto(points: list[SweepPoint]) -> list[SweepPoint]:
    """The points no other point beats on both measured latency (lower) and accuracy (higher)."""
    ok = sorted((p for p in points if p.status != "failed" and p.accuracy is not None), key=lambda p: p.ratio)
    front, best = [], -1.0
    for p in ok:
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def pareto_plot(s: Sweep) -> str:
    """Left: one-shot and fine-tuned metric against measured latency; right: the fine-tuned points alone, on
    their own scale (fine-tuning often brings every point within a point of the dense model)."""
    fig = new_figure(10.5, 4.0)
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})
    allocators = list(dict.fromkeys(p.allocator for p in s.points))
    for k, ax in enumerate(axes):
        for i, a in enumerate(allocators):
            _allocator_points(ax, s, a, STYLES[i % len(STYLES)], one_shot=k == 0)
        front = pareto(s.points)
        if len(front) > 1:
            ax.plot(
                [p.ratio for p in front],
                [100 * p.accuracy for p in front],
                "-",
                color="#444",
                lw=1,
                alpha=0.6,
                label="Pareto front (fine-tuned)",
            )
        dense = next((p.accuracy_dense for p in s.points if p.accuracy_dense is not None), None)
        if dense is not None:
            ax.axhline(100 * dense, color="#9e9e9e", ls="--", lw=1, label=f"dense {100 * dense:.2f}%")
        ax.set_xlabel("measured latency / dense latency (95% interval)")
        ax.set_ylabel("metric, %")
        ax.set_xlim(0, 1.05)
        style_axes(ax)
        ax.grid(axis="y", color="#eee")
    axes[0].set_title("one-shot (hollow) and fine-tuned", fontsize=9)
    axes[1].set_title("fine-tuned only", fontsize=9)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7, frameon=False, loc="lower right")
    fig.tight_layout()
    return svg_text(fig)


def _allocator_points(ax, s: Sweep, a: str, style: tuple[str, str], one_shot: bool) -> None:
    color, marker = style
    ok = [p for p in s.points if p.allocator == a and p.status != "failed" and p.accuracy is not None]
    if ok:
        ax.errorbar(
            [p.ratio for p in ok],
            [100 * p.accuracy for p in ok],
            xerr=[[p.ratio - p.ratio_ci[0] for p in ok], [p.ratio_ci[1] - p.ratio for p in ok]],
            fmt=marker,
            color=color,
            capsize=3,
            label=f"{a} (fine-tuned)",
        )
        for p in ok:
            ax.annotate(
                f"{p.budget:g}",
                (p.ratio, 100 * p.accuracy),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=color,
            )
        one = [p for p in ok if p.accuracy_oneshot is not None]
        if one_shot and one:
            ax.plot(
                [p.ratio for p in one],
                [100 * p.accuracy_oneshot for p in one],
                marker,
                color=color,
                mfc="none",
                alpha=0.6,
                label=f"{a} (one-shot)",
            )
    for p in (p for p in s.points if p.allocator == a and p.status == "failed"):
        ax.axvline(p.budget, color=color, ls=":", lw=1)
        ax.annotate(
            f"{a} {p.budget:g}: failed",
            (p.budget, 0.02),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            color=color,
        )


def index_html(s: Sweep) -> str:
    failed = sum(p.status == "failed" for p in s.points)
    parts = [
        f"<h1>hwprune sweep: {html.escape(s.model)}</h1>",
        f"<p>Target <code>{html.escape(s.target)}</code>, data {html.escape(s.data or 'none')}; "
        f"{len(s.points)} points, {failed} failed. Each point is a full run (its own report.html); latency is "
        "the final interleaved measurement of the pruned model against the dense one.</p>",
        pareto_plot(s),
        html_table(*table_rows(s)),
    ]
    if s.command:
        parts += ["<h2>Reproduce</h2>", f"<pre>{html.escape(s.command)}</pre>"]
    parts.append("<h2>Runs</h2><p>" + "<br>".join(html.escape(p.out) for p in s.points if p.out) + "</p>")
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>hwprune sweep</title>'
        f"<style>{CSS}table{{font-size:.8em}}</style></head><body>\n{body}\n</body></html>\n"
    )


def index_md(s: Sweep) -> str:
    head, rows = table_rows(s)
    lines = [
        f"# hwprune sweep: {s.model}",
        "",
        f"Target `{s.target}`, data {s.data or 'none'}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
    ]
    if s.command:
        lines += ["```", s.command, "```", ""]
    return "\n".join(lines)


def write_sweep(out: str | Path, s: Sweep) -> None:
    """sweep.json, index.md and index.html, each rendered then renamed into place."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("index.md", index_md(s)), ("index.html", index_html(s)), ("sweep.json", s.to_json())):
        write_file_atomic(out / name, text)
