"""Every CLI error path: one line on stderr, exit code 2, nothing written to --out."""

import json

import pytest
from helpers import assert_one_line_error
from helpers import run_cli as run

from hwprune.cli.main import main


def test_error_after_progress_output_is_still_one_line(capsys, tmp_path, tiny_file):
    """Without --quiet, progress goes to stderr first; the error is still a single final line."""
    argv = ["--model", f"{tiny_file}:tiny_cnn", "--budget", "1us", "--target", "analytic-test"]
    code, _, err = run(capsys, "prune", *argv, "--out", str(tmp_path / "o"))
    assert code == 2 and "Traceback" not in err
    assert err.rstrip().splitlines()[-1].startswith("hwprune: error: budget")
    assert sum("hwprune: error" in x for x in err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--model", "nonsense"], "cannot understand model spec"),
        (["--model", "torchvision:resnet19"], "unknown torchvision model 'resnet19'"),
        (["--model", "example:nope"], "unknown example 'nope'"),
        (["--model", "missing.py:f"], "not found"),
        (["--model", "{tiny}:nothing_here"], "has no function"),
        (["--model", "{tiny}:not_a_model"], "must return an nn.Module"),
        (["--model", "{tiny}:tiny_cnn", "--input-shape", "5x8x8"], "does not fit"),
        (["--model", "{tiny}:tiny_cnn", "--input-shape", "3xbig"], "--input-shape"),
        (["--model", "{tiny}:tiny_cnn", "--budget", "fast"], "--budget"),
        (["--model", "{tiny}:tiny_cnn", "--budget", "1.5"], "between 0 and 1"),
        (["--model", "{tiny}:tiny_cnn", "--budget", "power=3W"], "unknown kind 'power'"),
        (["--model", "{tiny}:tiny_cnn", "--budget", "memory=8XB"], "unknown unit"),
        (["--model", "{tiny}:tiny_cnn", "--budget", "params=1M,params=2M"], "more than once"),
        (["--model", "{tiny}:tiny_cnn", "--budget", "energy=1mJ"], "no energy model"),
        (["--model", "{tiny}:tiny_cnn", "--data", "imagenet"], "unknown data set 'imagenet'"),
        (["--model", "{tiny}:tiny_cnn", "--data", "digits"], "do not fit the model"),
        (["--model", "{tiny}:tiny_cnn", "--allocator", "magic"], "unknown allocator 'magic'"),
        (["--model", "{tiny}:tiny_cnn", "--criterion", "vibes"], "unknown criterion 'vibes'"),
        (["--model", "{tiny}:tiny_cnn", "--finetune-epochs", "2"], "(--data on the command line)"),
        (["--model", "{tiny}:tiny_cnn", "--value", "sensitivity"], "(--data on the command line)"),
        (["--model", "{tiny}:tiny_cnn", "--value", "vibes"], "must be auto, scores or sensitivity (--value)"),
        (["--model", "{tiny}:tiny_cnn", "--batch-size", "0"], "--batch-size"),
        (["--model", "{tiny}:tiny_cnn", "--trust", "1.5"], "loop.trust 1.5: must be in [0, 1]"),
        # a deterministic target: a measured layer time under heavy load can drop to ~0 and hide infeasibility
        (["--model", "{tiny}:tiny_cnn", "--budget", "1us", "--target", "analytic-test"], "cannot be met"),
    ],
)
def test_prune_errors(capsys, tmp_path, tiny_file, argv, needle):
    argv = [a.replace("{tiny}", tiny_file) for a in argv]
    out = tmp_path / "out"
    code, _, err = run(capsys, "prune", *argv, "--quiet", "--out", str(out))
    assert_one_line_error(code, err, needle)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []  # no temp dirs left behind


def test_out_that_is_not_an_hwprune_dir_is_refused(capsys, tmp_path, tiny_file):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    code, _, err = run(capsys, "prune", "--model", f"{tiny_file}:tiny_cnn", "--quiet", "--out", str(out))
    assert_one_line_error(code, err, "not an hwprune output")
    assert (out / "thesis.tex").read_text() == "x"


def test_bench_error_and_success(capsys, tiny_file):
    code, _, err = run(capsys, "bench", "--model", "torchvision:not_a_net")
    assert_one_line_error(code, err, "unknown torchvision model")
    code, out, _ = run(capsys, "bench", "--model", f"{tiny_file}:tiny_cnn", "--batch-size", "3")
    assert code == 0 and "latency" in out and "input (3, 3, 8, 8)" in out


def test_load_of_a_damaged_saved_dir_is_one_line(capsys, tmp_path):
    d = tmp_path / "saved"
    d.mkdir()
    (d / "spec.json").write_text(json.dumps({"format": "something-else"}))
    code, _, err = run(capsys, "bench", "--model", str(d))
    assert_one_line_error(code, err, "unknown format")


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "prune", "bench"):
        assert cmd in out
