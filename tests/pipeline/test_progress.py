"""Progress: a bar with an ETA on a terminal; with stderr not a terminal one line per stage; --quiet: none."""

import re

from hwprune.cli.main import main
from hwprune.cost.progress import Stage


def test_a_stage_off_a_terminal_is_one_line(capsys):
    with Stage("latency table", 3, "layer") as s:
        for _ in range(3):
            s.update()
        s.set_postfix(measured=5, cached=1)
    err = capsys.readouterr().err
    assert re.fullmatch(r"latency table: 3 layers in \d+\.\d s \(measured=5, cached=1\)\n", err)


def test_a_stage_that_fails_prints_no_summary(capsys):
    try:
        with Stage("sensitivity", 4, "plan") as s:
            s.update()
            raise ValueError
    except ValueError:
        pass
    assert capsys.readouterr().err == ""


def test_a_run_logged_to_a_file_prints_one_line_per_stage(tmp_path, tiny_file, capsys):
    argv = ["prune", "--model", f"{tiny_file}:tiny_cnn", "--target", "analytic-test", "--batch-size", "64"]
    assert main(argv + ["--budget", "latency=0.7", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    assert re.search(r"^latency table: 3 layers in \d+\.\d s \(measured=\d+, cached=\d+\)$", err, re.M)
    assert re.search(r"^closed loop: \d+ iterations? in \d+\.\d s \(latency=\d+%\)$", err, re.M)
    assert "\r" not in err and "it/s" not in err  # no bar


def test_a_quiet_run_prints_no_stage_lines(tmp_path, tiny_file, capsys):
    argv = ["prune", "--model", f"{tiny_file}:tiny_cnn", "--target", "analytic-test", "--batch-size", "64"]
    assert main(argv + ["--budget", "latency=0.7", "--quiet", "--out", str(tmp_path / "o")]) == 0
    assert "latency table:" not in capsys.readouterr().err
    with Stage("sensitivity", 2, "plan", progress=False) as s:
        s.update(2)
    assert capsys.readouterr().err == ""
