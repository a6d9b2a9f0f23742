"""report.html: the report as one self-contained page (plots as inline SVG made with matplotlib, no script,
nothing fetched), and the check that a page fetches nothing (`external_references`), shared by the tests and
benchmarks/render_reports.py.

matplotlib is imported inside the plotting functions: `hwprune` commands that write no page never pay for it.
The SVGs carry no date and fixed element ids, so the same report renders to the same bytes.
"""

from __future__ import annotations

import html
import io
import re

from hwprune.report import text as rt
from hwprune.report.schema import Report

#: Colours: dense grey, pruned blue, the budget red, the chosen width orange.
DENSE, PRUNED, LIMIT, CHOSEN, ONESHOT = "#9e9e9e", "#1f77b4", "#d62728", "#ff7f0e", "#8fb8de"

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:24px auto;
max-width:1080px;color:#222;line-height:1.45;padding:0 16px}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:3px;
margin-top:1.6em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 9px;
text-align:right;white-space:nowrap}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.decision{font-size:1.25em;background:#eef5fc;border-left:5px solid #1f77b4;padding:10px 14px;margin:10px 0}
.met{color:#1a7f37;font-weight:600}.notmet{color:#c62828;font-weight:600}
.warn{background:#fff4e5;border-left:5px solid #ef6c00;padding:8px 12px;margin:6px 0}
pre{background:#f6f8fa;padding:8px 12px;overflow-x:auto;white-space:pre-wrap}.grid{display:flex;flex-wrap:wrap;
gap:8px}.muted{color:#666;font-size:.92em}svg{max-width:100%;height:auto}
"""


# ---------------------------------------------------------------------------------------------- no fetch
#: Attributes and CSS through which a page makes the browser fetch something.
_FETCH_ATTRS = re.compile(
    r"""\s(src|href|xlink:href|srcset|poster|action|data|background|formaction|ping)\s*=\s*["']?([^"'\s>]*)""",
    re.IGNORECASE,
)
_CSS_FETCH = re.compile(r"""(url\(\s*["']?([^"')]*)|@import\s+["']?([^"';\s]+))""", re.IGNORECASE)
_ACTIVE = re.compile(r"<\s*(script|iframe|object|embed|link|meta\s+http-equiv)\b", re.IGNORECASE)


def external_references(page: str) -> list[str]:
    """Everything in `page` that would make a browser fetch or run something: src/href (and the like) that
    are not in-page anchors (#...) or data: URIs, CSS url()/@import of the same, and script, iframe, object,
    embed, link or meta-refresh elements. An empty list: the page opens with no network and no script."""
    found = [f"<{m.group(1)}>" for m in _ACTIVE.finditer(page)]
    for m in _FETCH_ATTRS.finditer(page):
        value = m.group(2)
        if value and not value.startswith(("#", "data:")):
            found.append(f"{m.group(1)}={value}")
    for m in _CSS_FETCH.finditer(page):
        value = m.group(2) or m.group(3) or ""
        if not value.startswith(("#", "data:")):
            found.append(m.group(0))
    return found


# ---------------------------------------------------------------------------------------------- plots
def new_figure(w: float, h: float):
    from matplotlib.figure import Figure  # noqa: PLC0415  (matplotlib only when a page is written)

    fig = Figure(figsize=(w, h), dpi=100)
    return fig


def svg_text(fig) -> str:
    import matplotlib  # noqa: PLC0415

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "hwprune", "svg.fonttype": "none", "font.size": 9}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # no XML declaration or DOCTYPE (the DTD's address)
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)


def style_axes(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#eee")
    ax.set_axisbelow(True)


def latency_plot(r: Report) -> str:
    """Dense latency (when planning) and the pruned decision figure with its 95% interval, the budget's limit,
    the prediction: the figures the verdict rests on, on one scale."""
    fig = new_figure(7.5, 2.2)
    ax = fig.add_subplot()
    dense = r.dense_latency_at_planning_ms
    lo, hi = r.measured_latency_ci_ms
    v = r.measured_latency_ms
    ax.barh(0, dense, color=DENSE, height=0.55)
    ax.text(dense, 0, f" {dense:.3f} ms", va="center", fontsize=8)
    ax.barh(1, v, color=PRUNED, xerr=[[v - lo], [hi - v]], capsize=4, height=0.55, label="measured (95% interval)")
    ax.text(hi, 1, f" {v:.3f} ms", va="center", fontsize=8)
    if r.predicted_latency_ms is not None:
        ax.plot([r.predicted_latency_ms], [1.42], marker="v", color=CHOSEN, ls="none", label="predicted")
    if r.budget.seconds is not None:
        lim = r.budget.seconds * 1e3
        ax.axvline(lim, color=LIMIT, ls="--", lw=1.5, label=f"limit {lim:.3f} ms ({r.budget.text})")
    ax.set_yticks([0, 1], ["dense\n(when planning)", "pruned"])
    ax.set_ylim(-0.5, 1.6)
    ax.set_xlim(0, max(dense, hi) * 1.15)
    ax.set_xlabel("latency, ms")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False, fontsize=8)
    style_axes(ax)
    return svg_text(fig)


def loop_plot(r: Report) -> str:
    """Each closed-loop iteration of the headline budget: aim, predicted and measured (with its interval)."""
    kind = r.budget.kind if r.budget.kind in (r.loop[0].budgets if r.loop else {}) else next(iter(r.loop[0].budgets))
    limit = next((b.limit for b in r.budgets if b.kind == kind), None)
    scale = 1e3 if kind == "latency" else 1.0
    fig = new_figure(7.5, 2.6)
    ax = fig.add_subplot()
    its = [s.iteration for s in r.loop]
    figs = [s.budgets[kind] for s in r.loop]
    meas = [f.measured * scale for f in figs]
    err = [
        [m - (f.low * scale if f.low is not None else m) for m, f in zip(meas, figs, strict=True)],
        [(f.high * scale if f.high is not None else m) - m for m, f in zip(meas, figs, strict=True)],
    ]
    ax.errorbar(its, meas, yerr=err, fmt="o-", color=PRUNED, capsize=4, label="measured (95% interval)")
    ax.plot(its, [f.predicted * scale for f in figs], "D", color=CHOSEN, label="predicted")
    ax.plot(its, [f.aim * scale for f in figs], "_", color="#444", markersize=14, mew=2, label="aim")
    if limit is not None:
        ax.axhline(limit * scale, color=LIMIT, ls="--", lw=1.5, label="limit")
    ax.set_xticks(its)
    ax.set_xlabel("iteration")
    ax.set_ylabel("latency, ms" if kind == "latency" else kind)
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4)
    style_axes(ax)
    return svg_text(fig)


def staircase_plot(r: Report) -> str:
    """The costliest groups' measured latency over width: the staircase, its steps, the chosen width."""
    n = len(r.staircases)
    cols = min(3, n)
    rows = -(-n // cols)
    fig = new_figure(3.4 * cols, 2.5 * rows)
    for i, s in enumerate(r.staircases):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.step(s.widths, s.ms, where="post", color=PRUNED, lw=1.4)
        steps = [(w, m) for w, m in zip(s.widths, s.ms, strict=True) if w in set(s.steps)]
        if steps:
            ax.plot(*zip(*steps, strict=True), "v", color="#444", markersize=4, label="step")
        c = s.ms[s.widths.index(s.chosen)] if s.chosen in s.widths else None
        ax.axvline(s.chosen, color=CHOSEN, lw=1.5)
        if c is not None:
            ax.plot([s.chosen], [c], "o", color=CHOSEN, markersize=7)
        ax.set_title(f"{s.group}: {s.chosen}/{s.size} kept", fontsize=8.5)
        ax.set_xlabel("width (channels)", fontsize=8)
        ax.set_ylabel("table latency, ms", fontsize=8)
        ax.set_ylim(bottom=0)
        style_axes(ax)
    fig.tight_layout()
    return svg_text(fig)


def widths_plot(r: Report) -> str:
    """Kept width per group against the dense width."""
    groups = r.groups[:60]
    fig = new_figure(7.5, 0.8 + 0.22 * len(groups))
    ax = fig.add_subplot()
    ys = range(len(groups))
    ax.barh(ys, [g.size for g in groups], color="#e0e0e0", height=0.75, label="dense")
    ax.barh(ys, [g.width for g in groups], color=PRUNED, height=0.75, label="kept")
    for y, g in zip(ys, groups, strict=True):
        ax.text(g.size, y, f" {g.width / g.size:.0%}", va="center", fontsize=7)
    ax.set_yticks(list(ys), [g.id for g in groups], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("channels")
    ax.set_xlim(0, max(g.size for g in groups) * 1.1)
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
    style_axes(ax)
    return svg_text(fig)


def accuracy_plot(r: Report) -> str:
    """Metric of the dense model, the pruned one before fine-tuning (one-shot) and after."""
    bars = [("dense", r.dense.accuracy, DENSE), ("one-shot", r.pruned.accuracy_oneshot, ONESHOT)]
    if r.pruned.accuracy is not None and (r.settings.get("finetune", {}).get("epochs") or r.training):
        bars.append(("fine-tuned", r.pruned.accuracy, PRUNED))
    elif r.pruned.accuracy_oneshot is None:
        bars.append(("pruned", r.pruned.accuracy, PRUNED))
    bars += [(f"evaluated: {e.model}", e.metric, CHOSEN) for e in r.evaluations]
    bars = [b for b in bars if b[1] is not None]
    fig = new_figure(7.5, 0.6 + 0.4 * len(bars))
    ax = fig.add_subplot()
    for i, (_name, v, color) in enumerate(bars):
        ax.barh(i, 100 * v, color=color, height=0.6)
        ax.text(100 * v, i, f" {100 * v:.2f}%", va="center", fontsize=8)
    ax.set_yticks(range(len(bars)), [b[0] for b in bars])
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("metric, %")
    style_axes(ax)
    return svg_text(fig)


# ---------------------------------------------------------------------------------------------- page
def html_table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _plain(text: str) -> str:
    """Markdown's **bold** and `code` as HTML (the shared text lines are written for report.md)."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def page(r: Report, out: str = "OUT") -> str:
    """report.html for report `r` written to directory `out` (named in the load and deploy commands)."""
    verdict_cls = "met" if r.budget.met else "notmet"
    parts = [f"<h1>hwprune report: {html.escape(r.model)}</h1>"]
    parts += [f'<div class="warn">{_plain(w)}</div>' for w in rt.warnings(r)]
    parts.append(f'<div class="decision">{_plain(rt.decision_line(r))}</div>')
    parts.append(f'<p class="{verdict_cls}">{_plain(rt.budget_headline(r))}</p>')
    parts += [f"<p>{_plain(line.lstrip('- '))}</p>" for line in rt.budget_lines(r)]
    parts.append(f"<p>{_plain(rt.settings_line(r))}</p>")

    parts += ["<h2>Latency</h2>", latency_plot(r)]
    parts += [f"<p>{_plain(line)}</p>" for line in rt.measurement_lines(r)]
    if r.loop:
        parts += ["<h2>Closed loop: aim, predicted, measured</h2>", loop_plot(r)]
        parts.append(html_table(*rt.loop_table(r)))
    if r.staircases:
        parts += [
            "<h2>Where the latency is: measured staircases of the costliest groups</h2>",
            '<p class="muted">Each curve is the latency table\'s time of the layers that read or write the '
            "group, at every candidate width, with the other groups at their pruned widths; markers: steps "
            "(more than 5% of the group's dense time); orange: the width chosen.</p>",
            staircase_plot(r),
        ]
    if r.groups:
        parts += ["<h2>Kept width per group</h2>", widths_plot(r)]
    if r.dense.accuracy is not None or r.evaluations:
        parts += ["<h2>Accuracy (the run's metric)</h2>", accuracy_plot(r)]
        if r.evaluations:
            parts.append(
                html_table(
                    ["evaluated model", "data", "metric", "batches"],
                    [[e.model, e.data, f"{100 * e.metric:.2f}%", str(e.batches)] for e in r.evaluations],
                )
            )
    parts += ["<h2>Counts</h2>", html_table(["", "dense", "pruned"], [list(x) for x in rt.summary_rows(r)])]
    if r.deployment is not None:
        parts += ["<h2>Deployment</h2>"] + [f"<p>{_plain(x)}</p>" for x in rt.deployment_text(r.deployment)]
    if r.training is not None:
        parts += ["<h2>Training</h2>", html_table(["", ""], rt.training_rows(r.training))]
    if r.method:
        parts += ["<h2>Method</h2>", f"<pre>{html.escape(rt.method_text(r))}</pre>"]
    parts += ["<h2>Reproduce, load, deploy</h2>", f"<pre>{html.escape(rt.commands(r, out))}</pre>"]
    parts += ["<h2>Summary for a pull request</h2>", f"<pre>{html.escape(rt.pr_summary(r))}</pre>"]
    if r.notes:
        parts += ["<h2>Notes</h2>"] + [f"<p>{_plain(n)}</p>" for n in r.notes]
    parts += ["<h2>Machine</h2>"] + [f"<p>{_plain(x)}</p>" for x in rt.machine_text(r)]
    body = "\n".join(parts)
    title = html.escape(f"hwprune: {r.model}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )
