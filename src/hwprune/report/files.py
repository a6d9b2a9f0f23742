"""Stage 9: write the output directory (model/, plan.json, report.json, report.md, report.html) atomically."""

from __future__ import annotations

from pathlib import Path

from hwprune.core.errors import HwpruneError
from hwprune.core.files import atomic_directory, write_file_atomic
from hwprune.export.model import write_model
from hwprune.export.pretrained import is_transformers, write_pretrained
from hwprune.report.schema import Evaluation, Report
from hwprune.report.text import (  # noqa: F401  (re-exported: the CLI and tests read them here)
    FAST_LINE,
    budget_lines,
    current_command,
    header_lines,
    markdown,
    set_command,
    text_table,
)


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
        if result.report.command is None:
            result.report.command = current_command()
        _write_reports(tmp, result.report, str(out))
        for name, data in getattr(result, "files", {}).items():
            (tmp / name).write_bytes(data)
    return out


def _write_reports(directory: Path, r: Report, out: str) -> None:
    from hwprune.report.html import page  # noqa: PLC0415  (matplotlib: only when a report is written)

    (directory / "report.json").write_text(r.to_json())
    (directory / "report.md").write_text(markdown(r, out))
    (directory / "report.html").write_text(page(r, out))


def rewrite_reports(out: str | Path, r: Report) -> None:
    """report.json, report.md and report.html of an output directory replaced by `r`'s: every file is
    rendered first (an error leaves all three as they were), then each is renamed into place."""
    out = Path(out)
    from hwprune.report.html import page  # noqa: PLC0415

    texts = {"report.md": markdown(r, str(out)), "report.html": page(r, str(out)), "report.json": r.to_json()}
    for name, text in texts.items():  # report.json last: the other two are derived from it
        write_file_atomic(out / name, text)


def add_evaluation(out: str | Path, evaluation: Evaluation) -> Report:
    """Record `evaluation` in the report of output directory `out` (replacing one of the same model and data)."""
    path = Path(out) / "report.json"
    if not path.exists():
        raise HwpruneError(f"{out}: no report.json; give an output directory of `hwprune prune`")
    r = Report.load(path)
    r.evaluations = [e for e in r.evaluations if (e.model, e.data) != (evaluation.model, evaluation.data)]
    r.evaluations.append(evaluation)
    rewrite_reports(out, r)
    return r
