"""The report as text: report.md (`markdown`), the terminal table, and the lines report.html shares with them
(the decision figure, the budget lines, commands, the pull-request summary, warnings)."""

from __future__ import annotations

import shlex

from hwprune.core.budget import format_amount
from hwprune.report.schema import Deployment, Latency, Report, Training


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


def _perplexity_row(d, p) -> list[tuple[str, str, str]]:
    if d.perplexity is None or p.perplexity is None:
        return []
    oneshot = f" (one-shot {p.perplexity_oneshot:.3f})" if p.perplexity_oneshot is not None else ""
    return [("perplexity per token, held out", f"{d.perplexity:.3f}", f"{p.perplexity:.3f}{oneshot}")]


def summary_rows(r: Report) -> list[tuple[str, str, str]]:
    d, p = r.dense, r.pruned
    lo, hi = r.measured_latency_ci_ms
    return [
        (
            "latency, ms (decision: ratio x dense at planning)",
            f"{r.dense_latency_at_planning_ms:.3f}",
            f"{r.measured_latency_ms:.3f} [{lo:.3f}, {hi:.3f}]",
        ),
        ("latency in the final measurement, ms (raw medians)", _ms(d.latency), _ms(p.latency)),
        (
            "speedup (t_dense / t_pruned)",
            "1.00x",
            f"{r.speedup:.2f}x [{r.speedup_ci[0]:.2f}, {r.speedup_ci[1]:.2f}]",
        ),
        ("accuracy", _acc(d.accuracy), _acc(p.accuracy)),
        *_perplexity_row(d, p),
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


def loop_table(r: Report) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the closed loop: per iteration and budget, aim -> predicted -> measured (of budget)."""
    kinds = [b.kind for b in r.budgets]
    head = ["iter"] + [f"{k}: aim → predicted → measured (of budget)" for k in kinds]
    rows = []
    for h in r.loop:
        cells = [
            f"{format_amount(k, f.aim)} → {format_amount(k, f.predicted)} → {format_amount(k, f.measured)} "
            f"({f.used:.0%})"
            for k, f in ((k, h.budgets[k]) for k in kinds if k in h.budgets)
        ]
        rows.append([str(h.iteration), *cells])
    return head, rows


def _md_table(head: list[str], rows: list[list[str]], align: str = "---") -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + [align] * (len(head) - 1)) + "|",
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def text_table(r: Report) -> str:
    rows = [("", "dense", "pruned")] + summary_rows(r)
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    table = [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows]
    return "\n".join(header_lines(r) + [decision_line(r).replace("**", "")] + table)


def warnings(r: Report) -> list[str]:
    """What must be read before any figure: test-mode timing, an unsteady machine, a dense metric near chance."""
    near_chance = [n for n in r.notes if "near chance" in n]
    return header_lines(r) + [f"Data warning: {n}" for n in near_chance]


def decision_line(r: Report) -> str:
    """The one pruned latency the verdict rests on: the final interleaved pruned/dense ratio x the dense
    latency measured when planning (machine drift between the two cancels)."""
    lo, hi = r.measured_latency_ci_ms
    return (
        f"Pruned latency: **{r.measured_latency_ms:.3f} ms** [95% CI {lo:.3f}, {hi:.3f}] = "
        f"{r.latency_ratio:.3f}x the dense model ({r.dense_latency_at_planning_ms:.3f} ms when planning): "
        f"**{r.speedup:.2f}x faster** [{r.speedup_ci[0]:.2f}, {r.speedup_ci[1]:.2f}]."
    )


def budget_headline(r: Report) -> str:
    b = r.budget
    target = r.settings["target"]["name"]
    if b.text is None:
        return f"Method `{r.settings.get('method_kind', 'units')}` on target `{target}`: no budget (figures reported)."
    return f"Budget **{b.text}** on target `{target}`: **{b.verdict}**."


def settings_line(r: Report) -> str:
    s = r.settings
    head = (
        f"Allocator `{s['loop']['allocator']}`, criterion `{s['criterion']}`"
        if r.budget.text is not None and s.get("method_kind", "budget") == "budget"
        else f"Granularity `{s['method']['granularity']}`, selection `{s['method']['selection']}`, "
        f"criterion `{s['criterion']}`"
    )
    return f"{head}, input {r.input_shape}, fine-tuning epochs {s['finetune']['epochs']}."


def measurement_lines(r: Report) -> list[str]:
    lines = []
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
        f"tolerance {'±' + format(m.tolerance, '.0%') if m.tolerance else 'none'}, stopped on {m.stopped}). "
        f"Its raw medians (the second row of the table, not the decision figure): dense "
        f"{_ms(r.dense.latency)} ms, pruned {_ms(r.pruned.latency)} ms."
    )
    if r.pruned.accuracy_oneshot is not None:
        lines.append(f"One-shot accuracy before fine-tuning: {_acc(r.pruned.accuracy_oneshot)}.")
    t = r.latency_table
    if t:
        lines.append(
            f"Latency table: {t.entries_measured} entries measured, {t.cache_hits} reused from `{t.cache}` "
            f"({t.seconds:.1f} s)."
        )
    return lines


def training_rows(t: Training) -> list[list[str]]:
    rows = [
        ["epochs / steps", f"{t.epochs} / {t.steps}"],
        ["optimizer, schedule, precision", f"{t.optimizer}, {t.schedule}, {t.precision}"],
        ["processes x batch size", f"{t.processes} x {t.batch_size}"],
        ["samples/s", f"{t.samples_per_s:,.0f}"],
    ]
    if t.seconds_per_epoch:
        rows.append(["seconds per epoch", ", ".join(f"{x:.1f}" for x in t.seconds_per_epoch)])
    if t.best_step is not None:
        best = f" ({_acc(t.best_metric)})" if t.best_metric is not None else ""
        rows.append(["best step kept", f"{t.best_step}{best}"])
    if t.stopped_early_at is not None:
        rows.append(["stopped early at step", str(t.stopped_early_at)])
    if t.resumed_from:
        rows.append(["resumed from", t.resumed_from])
    return rows


def method_text(r: Report) -> str:
    m = r.method or {}
    lines = [f"{k}: {v}" for k, v in m.items() if k != "rounds" and not isinstance(v, (dict, list))]
    for rd in m.get("rounds", []):
        lines.append("round " + ", ".join(f"{k}={v}" for k, v in rd.items() if k != "removed"))
    if r.weight_sparsity:
        lines.append(f"weight sparsity {r.weight_sparsity.get('overall', 0):.1%}")
    return "\n".join(lines)


#: The command line of this process when it is the `hwprune` CLI (set by `cli.main`), for the reproduce line.
_COMMAND: list[str] = []


def set_command(argv: list[str] | None) -> None:
    """`hwprune ARGV` is the command being run (None: no CLI command, e.g. once `main` returns)."""
    _COMMAND[:] = ["hwprune", *argv] if argv is not None else []


def current_command() -> str | None:
    return shlex.join(_COMMAND) if _COMMAND else None


def equivalent_command(r: Report, out: str = "OUT") -> str:
    """The `hwprune prune` line with this run's settings (for a run started from Python)."""
    s = r.settings
    parts = ["hwprune", "prune", "--model", r.model]
    if r.input_shape:
        parts += ["--batch-size", str(r.input_shape[0])]
    if r.budget.text:
        parts += ["--budget", r.budget.text, "--allocator", s["loop"]["allocator"]]
    else:
        parts += ["--granularity", s["method"]["granularity"], "--selection", s["method"]["selection"]]
    parts += ["--target", s["target"]["name"], "--finetune-epochs", str(s["finetune"]["epochs"]), "--out", out]
    return shlex.join(parts) + ("  # plus --data for the data described as: " + r.data if r.data else "")


def commands(r: Report, out: str = "OUT") -> str:
    reproduce = r.command or equivalent_command(r, out)
    lines = [
        "# reproduce" + ("" if r.command else " (the equivalent CLI line)"),
        reproduce,
        "# load in Python",
        f'import hwprune; model = hwprune.load("{out}/model")',
        "# deploy: an ONNX file (add --dtype int8 --data ... for int8)",
        f"hwprune export {shlex.quote(out)} --format onnx --out {shlex.quote(out.rstrip('/') + '.onnx')}",
    ]
    if r.deployment is not None:
        lines.append(f"# already written: {out}/{r.deployment.file}")
    return "\n".join(lines)


def pr_summary(r: Report) -> str:
    """Three lines to paste into a pull request."""
    target = r.settings["target"]["name"]
    shape = f", input {r.input_shape}" if r.input_shape else ""
    lines = [
        f"Pruned {r.model} with hwprune ({r.budget.text or 'method ' + str(r.settings.get('method_kind'))}, "
        f"target {target}{shape}): {r.budget.verdict}.",
        f"Latency {r.dense_latency_at_planning_ms:.3f} -> {r.measured_latency_ms:.3f} ms "
        f"({r.speedup:.2f}x [{r.speedup_ci[0]:.2f}, {r.speedup_ci[1]:.2f}], 95% CI); MACs x{r.macs_ratio or 0:.2f}, "
        f"params {r.dense.params / 1e6:.2f} -> {r.pruned.params / 1e6:.2f} M.",
    ]
    if r.dense.accuracy is not None:
        one = f", one-shot {_acc(r.pruned.accuracy_oneshot)}" if r.pruned.accuracy_oneshot is not None else ""
        lines.append(f"Metric {_acc(r.dense.accuracy)} dense -> {_acc(r.pruned.accuracy)} pruned{one}.")
    else:
        lines.append("No metric measured (no data given); run `hwprune evaluate DIR --data ...`.")
    return "\n".join(lines)


def machine_text(r: Report) -> list[str]:
    fp = r.fingerprint
    return [
        f"{fp.get('cpu')}, {fp.get('physical_cores')} physical / {fp.get('logical_cores')} logical cores, "
        f"{fp.get('threads')} threads, {fp.get('runtime')} torch {fp.get('torch')}, {fp.get('dtype')}.",
        *_machine_lines(r),
    ]


def regime_table(r: Report) -> tuple[list[str], list[list[str]]]:
    """A causal LM's latency in both regimes: the budgeted one is the run's final measurement."""
    head = ["regime", "one call", "dense, ms", "pruned, ms", "pruned / dense [95% CI]", ""]
    rows = [
        [
            f.regime,
            f.call,
            f"{f.dense_ms:.3f}",
            f"{f.pruned_ms:.3f}",
            f"{f.ratio:.3f} [{f.ratio_ci[0]:.3f}, {f.ratio_ci[1]:.3f}]",
            "budgeted" if f.budgeted else "measured after",
        ]
        for f in r.regimes
    ]
    return head, rows


def markdown(r: Report, out: str = "OUT") -> str:
    lines = [
        *[f"**{line}**\n" for line in warnings(r)],
        f"# hwprune report: {r.model}",
        "",
        decision_line(r),
        "",
        budget_headline(r),
        "",
        *budget_lines(r),
        *([""] if r.budgets else []),
        settings_line(r),
        "",
        *_md_table(["", "dense", "pruned"], [list(x) for x in summary_rows(r)], "---:"),
        "",
        *measurement_lines(r),
    ]
    lines += _deployment_lines(r.deployment)
    if r.regimes:
        lines += ["", "## Prefill and decode", "", *_md_table(*regime_table(r))]
    if r.evaluations:
        lines += ["", "## Evaluated after the run", ""]
        rows = [[f"`{e.model}`", e.data, _acc(e.metric), str(e.batches)] for e in r.evaluations]
        lines += _md_table(["model", "data", "metric", "batches"], rows)
    if r.training is not None:
        lines += ["", "## Training", "", *_md_table(["", ""], training_rows(r.training))]
    if r.loop:
        lines += ["", "## Closed loop (aim → predicted → measured)", "", *_md_table(*loop_table(r))]
    if r.staircases:
        lines += ["", "## Costliest groups: measured latency over width", ""]
        for s in r.staircases:
            at = s.ms[s.widths.index(s.chosen)] if s.chosen in s.widths else float("nan")
            lines.append(
                f"- `{s.group}`: {s.ms[-1]:.3f} ms at {s.size} channels, {at:.3f} ms at the chosen {s.chosen}; "
                f"steps at {', '.join(map(str, s.steps)) or 'none'}"
            )
    if r.groups:
        lines += ["", "## Width per group", ""]
        rows = [[f"`{g.id}`", str(g.size), str(g.width), f"{g.width / g.size:.0%}"] for g in r.groups]
        lines += _md_table(["group (root layer)", "dense", "pruned", "kept"], rows, "---:")
    if r.method:
        lines += ["", "## Method", "", "```", method_text(r), "```"]
    lines += ["", "## Reproduce, load, deploy", "", "```", commands(r, out), "```"]
    lines += ["", "## Summary for a pull request", "", "```", pr_summary(r), "```"]
    if r.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in r.notes]]
    lines += ["", "## Machine", "", *machine_text(r), ""]
    return "\n".join(lines)


def deployment_text(d: Deployment) -> list[str]:
    mode = f", {d.int8_mode}" if d.int8_mode else ""
    metric = f"; metric {_acc(d.metric_fp32)} fp32 -> {_acc(d.metric_deployed)} deployed" if d.metric_fp32 else ""
    return [
        f"`{d.file}` ({d.format} {d.dtype}{mode}, {d.size_bytes / 1e6:.2f} MB, fp32 graph {d.fp32_size_bytes / 1e6:.2f}"
        f" MB): dense fp32 {d.dense_fp32_ms:.3f} ms, pruned fp32 {d.pruned_fp32_ms:.3f} ms, deployed "
        f"{d.deployed_ms:.3f} ms [{d.deployed_ci_ms[0]:.3f}, {d.deployed_ci_ms[1]:.3f}]{metric}.",
        f"Speedup over the dense fp32 model: **{d.speedup:.2f}x** [{d.speedup_ci[0]:.2f}, {d.speedup_ci[1]:.2f}]; "
        f"quantization alone {d.quantization_speedup:.2f}x [{d.quantization_speedup_ci[0]:.2f}, "
        f"{d.quantization_speedup_ci[1]:.2f}] ({d.rounds} interleaved rounds, 95% intervals).",
        f"Parity on {d.parity_on}: max abs difference {d.max_abs_diff:.3g} (outputs up to {d.output_scale:.3g})"
        + (f", top-1 agreement {d.agreement:.2%}" if d.agreement is not None else "")
        + f". Calibrated on {d.calibration}.",
    ]


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
    return lines + [""] + deployment_text(d)[1:]


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
