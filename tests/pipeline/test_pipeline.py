"""End to end through the CLI on a small MLP (fast timing: figures are noise, the plumbing is real)."""

import json

import pytest
import torch

import hwprune
from hwprune.cli.main import main
from hwprune.plan.plan import Plan


def prune_mlp(tiny_file, out, allocator="hw") -> int:
    """`hwprune prune` of the test MLP at batch 64 to 0.6 of dense latency on the analytic target."""
    args = ["prune", "--target", "analytic-test", "--model", f"{tiny_file}:mlp", "--batch-size", "64"]
    return main(args + ["--budget", "0.6", "--allocator", allocator, "--quiet", "--out", str(out)])


def test_prune_end_to_end_then_reuse_the_cached_table(capsys, tmp_path, tiny_file):
    out = tmp_path / "run1"
    code = prune_mlp(tiny_file, out)
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and report["budget"]["met"]
    assert 0.87 * 0.6 <= report["latency_ratio"] <= 0.6  # the loop lands in its acceptance band
    assert sorted(p.name for p in out.iterdir()) == ["model", "plan.json", "report.html", "report.json", "report.md"]
    assert "speedup" in printed and "predicted" in printed

    # Report figures hang together.
    d, p = report["dense"], report["pruned"]
    # The speedup is the median of the interleaved rounds' ratios (timing.ratio), near the medians' ratio.
    assert report["speedup"] == pytest.approx(1 / report["latency_ratio"])
    assert 0.67 < report["speedup"] / (d["latency"]["median"] / p["latency"]["median"]) < 1.5
    assert report["compression"] == p["size_bytes"] / d["size_bytes"] < 1
    assert p["params"] < d["params"] and p["macs"] < d["macs"]
    assert report["latency_table"]["entries_measured"] > 0 and report["loop"]
    assert report["fingerprint"]["threads"] >= 1 and report["input_shape"] == [64, 1, 40]

    # The plan matches the saved model, and the saved model reloads to the same function.
    plan = Plan.load(out / "plan.json")
    model = hwprune.load(out / "model", trust_code=True)
    widths = {g.id: g.width for g in plan.groups}
    assert model.net[1].out_features == widths["net.1"] < 1024
    assert model.net[3].in_features == widths["net.1"] and model.net[3].out_features == widths["net.3"]
    x = torch.randn(5, 1, 40)
    from tiny_models import mlp

    dense, _ = mlp()
    keep1 = plan.groups[0].keep
    with torch.no_grad():  # the kept neurons compute exactly what they did in the dense model
        torch.testing.assert_close(model.net[1](x.flatten(1)), dense.net[1](x.flatten(1))[:, keep1])
        assert model(x).shape == (5, 10)

    # Second run on the same model: every table entry comes from the cache.
    code = prune_mlp(tiny_file, tmp_path / "run2", allocator="uniform")
    assert code == 0
    again = json.loads((tmp_path / "run2" / "report.json").read_text())
    assert again["latency_table"]["entries_measured"] == 0
    assert again["latency_table"]["cache_hits"] >= report["latency_table"]["entries_measured"]

    # The same --out is overwritten as a whole (it is an hwprune output).
    assert prune_mlp(tiny_file, out, allocator="global") == 0
    assert json.loads((out / "report.json").read_text())["settings"]["loop"]["allocator"] == "global"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_import_is_lean():
    import subprocess
    import sys

    code = "import sys, hwprune; print('torch' in sys.modules)"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "False"
