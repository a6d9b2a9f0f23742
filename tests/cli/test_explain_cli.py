"""`hwprune explain`: per-layer shares and bounds, steps, ideal vs delivered speedup, a plan's efficiency,
advice; the same content as JSON."""

import json

import pytest
from helpers import assert_one_line_error, run_cli

from hwprune.cli.main import main

ARGV = ["explain", "--target", "analytic-test", "--batch-size", "64"]


def test_explain_json_has_the_figures(tmp_path, tiny_file, capsys):
    code, stdout, _ = run_cli(capsys, *ARGV, "--model", f"{tiny_file}:tiny_cnn", "--budget", "0.1", "--json")
    assert code == 0
    ex = json.loads(stdout)
    layers = {x["name"]: x for x in ex["layers"]}
    assert set(layers) == {"conv1", "conv2", "fc"}
    shares = ex["bound_shares"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)
    # the analytic target: 1 us + 10 ps per MAC per layer, 50 us per call outside them
    assert ex["layer_sum_ms"] == pytest.approx(sum(x["ms"] for x in ex["layers"]))
    assert layers["conv2"]["bound"] == "compute" and layers["conv2"]["gflops"] == pytest.approx(ex["peak_gflops"])
    assert layers["conv2"]["cut_for_step"] is not None and layers["conv2"]["ms_after_step"] < layers["conv2"]["ms"]
    n = ex["narrowest"]
    assert n["ideal_speedup"] > n["delivered_speedup"] > 1 and n["ratio"] > 0.1
    assert ex["reachable"] is False and "out of reach" in ex["advice"][0]


def test_explain_text_and_a_plan(tmp_path, tiny_file, capsys):
    out = tmp_path / "o"
    argv = ["prune", "--model", f"{tiny_file}:tiny_cnn", "--target", "analytic-test", "--batch-size", "64"]
    assert main(argv + ["--budget", "latency=0.7", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    code, stdout, _ = run_cli(
        capsys, *ARGV, "--model", f"{tiny_file}:tiny_cnn", "--plan", out / "plan.json", "--budget", "0.5"
    )
    assert code == 0
    assert "share of dense latency" in stdout and "advice:" in stdout and "within reach" in stdout
    assert "of the ideal" in stdout
    code, js, _ = run_cli(capsys, *ARGV, "--model", f"{tiny_file}:tiny_cnn", "--plan", out / "plan.json", "--json")
    p = json.loads(js)["plan"]
    report = json.loads((out / "report.json").read_text())
    assert p["macs_ratio"] == pytest.approx(report["macs_ratio"])
    assert p["efficiency"] == pytest.approx(p["realised_speedup"] / p["ideal_speedup"])


def test_explain_refuses_a_budget_that_is_no_fraction(tiny_file, capsys):
    code, _, err = run_cli(capsys, *ARGV, "--model", f"{tiny_file}:tiny_cnn", "--budget", "2")
    assert_one_line_error(code, err, "--budget")
