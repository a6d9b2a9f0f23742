"""`hwprune sweep`: every budget x allocator run, failed points kept as failed, one Pareto page."""

import json

from helpers import assert_one_line_error, run_cli

from hwprune.report.html import external_references


def test_sweep_runs_every_point_and_keeps_the_failed_one(tmp_path, tiny_file, capsys):
    out = tmp_path / "sw"
    argv = ["sweep", "--model", f"{tiny_file}:tiny_cnn", "--target", "analytic-test", "--batch-size", "64"]
    code, stdout, err = run_cli(capsys, *argv, "--budgets", "0.7,0.00001", "--allocator", "hw,uniform", "--out", out)
    assert code == 1  # a point failed
    s = json.loads((out / "sweep.json").read_text())
    points = {(p["allocator"], p["budget"]): p for p in s["points"]}
    assert len(points) == 4
    for a in ("hw", "uniform"):
        assert points[(a, 0.00001)]["status"] == "failed" and "cannot be met" in points[(a, 0.00001)]["error"]
        ok = points[(a, 0.7)]
        assert ok["status"].startswith("met") and ok["ratio"] <= 0.7 and ok["ratio_ci"][0] <= ok["ratio"]
        report = json.loads((out / f"{a}-0.7" / "report.json").read_text())
        assert report["latency_ratio"] == ok["ratio"] and report["command"].startswith("hwprune prune")
    # the latency table is shared: only the first run measured it
    assert err.count("measured=0") >= 3
    html = (out / "index.html").read_text()
    assert external_references(html) == [] and "<svg" in html and html.count("failed") >= 2
    md = (out / "index.md").read_text()
    assert md.count("| hw |") == 2 and md.count("| uniform |") == 2 and "failed" in md
    assert "0.00001" not in stdout or "failed" in stdout


def test_bad_budgets_are_refused_before_any_run(tmp_path, tiny_file, capsys):
    code, _, err = run_cli(
        capsys, "sweep", "--model", f"{tiny_file}:tiny_cnn", "--budgets", "0.5,x", "--out", tmp_path / "sw"
    )
    assert_one_line_error(code, err, "--budgets")
    assert not (tmp_path / "sw").exists()
