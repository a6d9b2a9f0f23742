"""report.html: self-contained (no script, nothing fetched: checked on every generated page), deterministic,
leading with one decision figure; report.md without "Budget None" or empty sections; the staircases stored."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hwprune.cli.main import main
from hwprune.report.html import external_references, page
from hwprune.report.schema import Report
from hwprune.report.text import decision_line, markdown

ARGS = ["--target", "analytic-test", "--batch-size", "64", "--quiet"]


def _prune(tiny_file, out, *extra):
    code = main(["prune", "--model", f"{tiny_file}:tiny_cnn", *ARGS, *extra, "--out", str(out)])
    return code, Report.load(out / "report.json")


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    # tests/tiny_models.py (`from conftest import HERE` could find tests/finetune/conftest.py instead)
    out = tmp_path_factory.mktemp("html") / "o"
    code, r = _prune(str(Path(__file__).parents[1] / "tiny_models.py"), out, "--budget", "latency=0.7")
    assert code == 0
    return out, r


def test_every_page_fetches_and_runs_nothing(budget_run):
    out, _ = budget_run
    html = (out / "report.html").read_text()
    assert external_references(html) == []
    assert html.count("<svg") >= 4 and "<script" not in html.lower()


@pytest.mark.parametrize(
    "snippet",
    [
        '<script src="x.js"></script>',
        '<img src="https://example.com/a.png">',
        "<style>body{background:url(http://example.com/b.png)}</style>",
        "<style>@import 'https://fonts.example.com/f.css';</style>",
        '<link rel="stylesheet" href="s.css">',
        '<svg><image xlink:href="http://example.com/c.png"/></svg>',
    ],
)
def test_the_check_catches_what_a_browser_would_fetch(snippet):
    assert external_references(f"<html><body>{snippet}</body></html>")


def test_the_check_lets_anchors_and_data_uris_through():
    assert external_references('<a href="#loop">x</a><img src="data:image/png;base64,AAAA">') == []


def test_the_page_leads_with_one_decision_figure_and_is_deterministic(budget_run):
    out, r = budget_run
    html = (out / "report.html").read_text()
    assert html.index("Pruned latency:") < html.index("<svg")
    assert page(r, str(out)) == page(r, str(out)) == html  # no timestamp, fixed ids: same bytes
    md = (out / "report.md").read_text()
    lines = md.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("# hwprune report"))
    assert lines[head + 2] == decision_line(r) and md.count("Pruned latency:") == 1
    assert f"{r.measured_latency_ms:.3f} ms" in decision_line(r)
    for section in ("## Closed loop", "## Costliest groups", "## Reproduce, load, deploy", "## Summary for a pull"):
        assert section in md
    assert "hwprune prune --model" in md and f'hwprune.load("{out}/model")' in md


def test_staircases_are_the_tables_figures_with_the_chosen_width(budget_run):
    _, r = budget_run
    assert r.staircases
    widths = {g.id: g.width for g in r.groups}
    for s in r.staircases:
        assert s.chosen == widths[s.group] and s.widths[-1] == s.size and len(s.ms) == len(s.widths)
        assert s.ms == sorted(s.ms)  # the analytic target: time rises with width
    assert r.staircases[0].ms[-1] >= r.staircases[-1].ms[-1]  # costliest first


def test_the_command_that_ran_is_the_reproduce_line(budget_run):
    out, r = budget_run
    assert r.command.startswith("hwprune prune --model") and f"--out {out}" in r.command


def test_a_method_run_has_no_budget_none_and_no_empty_sections(tmp_path, tiny_file):
    code, r = _prune(tiny_file, tmp_path / "m", "--selection", "ratio", "--sparsity", "0.5")
    assert code == 0 and r.budget.text is None
    md = (tmp_path / "m" / "report.md").read_text()
    html = (tmp_path / "m" / "report.html").read_text()
    assert "Budget None" not in md and "None" not in md.split("## Method")[0]
    assert "## Closed loop" not in md and "Closed loop" not in html and "no budget" in md
    lines = md.splitlines()
    for i, line in enumerate(lines):  # every section header is followed by content
        if line.startswith("## "):
            assert any(x.strip() for x in lines[i + 1 : i + 3]), line
    assert external_references(html) == []


def test_matplotlib_is_not_imported_at_cli_start_up():
    code = "import sys, hwprune.cli.main; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_report_json_of_a_page_round_trips(budget_run):
    out, r = budget_run
    assert Report.from_dict(json.loads((out / "report.json").read_text())) == r
    assert markdown(r, str(out)) == (out / "report.md").read_text()
