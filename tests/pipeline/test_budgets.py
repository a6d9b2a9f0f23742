"""Budgets beyond latency: parsing, exact counts, per-layer curves, and the pipeline meeting them."""

import json

import pytest

from hwprune.cli.main import main


def _prune(tiny_file, out, budget, model="mlp", target="analytic-test"):
    args = ["prune", "--target", target, "--model", f"{tiny_file}:{model}", "--batch-size", "64"]
    code = main(args + ["--budget", budget, "--quiet", "--out", str(out)])
    return code, json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("kind,frac", [("params", 0.4), ("memory", 0.5), ("macs", 0.3)])
def test_counted_budget_is_met_exactly_as_counted(tmp_path, tiny_file, kind, frac):
    code, r = _prune(tiny_file, tmp_path / "out", f"{kind}={frac}")
    row = next(b for b in r["budgets"] if b["kind"] == kind)
    assert code == 0 and row["met"] and r["budget"]["met"]
    assert row["pruned"] <= row["limit"] == pytest.approx(frac * row["dense"])
    assert row["used"] >= 0.85  # not wastefully far under
    key = {"params": "params", "memory": "memory_bytes", "macs": "macs"}[kind]
    assert r["pruned"][key] == row["pruned"]  # the report's own figure is the one that was checked


def test_several_budgets_at_once_are_all_enforced(tmp_path, tiny_file):
    code, r = _prune(tiny_file, tmp_path / "out", "latency=0.7,params=0.3", model="tiny_cnn")
    assert code == 0
    rows = {b["kind"]: b for b in r["budgets"]}
    assert set(rows) == {"latency", "params"} and all(b["met"] for b in rows.values())
    assert rows["params"]["pruned"] <= 0.3 * rows["params"]["dense"]
    assert "params" in (tmp_path / "out" / "report.md").read_text()


def test_infeasible_counted_budget_is_one_line(tmp_path, tiny_file, capsys):
    code = main(
        [
            "prune",
            "--target",
            "analytic-test",
            "--model",
            f"{tiny_file}:mlp",
            "--budget",
            "params=10",
            "--quiet",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot be met" in err and "\n" not in err
    assert not (tmp_path / "o").exists()
