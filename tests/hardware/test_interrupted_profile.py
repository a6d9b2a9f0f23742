"""`hwprune profile build` killed (SIGKILL) or interrupted (SIGINT) mid-table: every entry written is kept,
reused by the next run, and the database passes SQLite's integrity check."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# 6 channels per conv: every width is a candidate and none is found by bisection, so the entries a build asks
# for do not depend on the (noisy) timings, and a rerun asks for every entry the killed run wrote. Padding 1
# on a 2x2 kernel grows the image by one pixel a layer, so each layer has its own signature (own entries).
MODEL = """
import torch
import torch.nn as nn


def deep():
    layers = [nn.Conv2d(3, 6, 3, padding=1)]
    for _ in range(10):
        layers += [nn.ReLU(), nn.Conv2d(6, 6, 2, padding=1)]
    return nn.Sequential(*layers), torch.randn(1, 3, 8, 8)
"""


def _start(tmp_path, cache):
    env = {**os.environ, "HWPRUNE_TIMING": "fast", "PYTHONPATH": str(SRC), "HWPRUNE_CACHE_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "hwprune.cli.main", "profile", "build", "--quiet", "--threads", "1"]
    argv += ["--model", f"{tmp_path / 'deep.py'}:deep", "--cache", str(cache)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _entries(cache) -> int:
    """Entries committed so far, read the way another process would (read-only, never blocking the writer)."""
    if not cache.exists():
        return 0
    try:
        db = sqlite3.connect(f"{cache.resolve().as_uri()}?mode=ro", uri=True, timeout=0.5)
        try:
            return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:  # not created yet, or locked for a moment
        return 0


def _interrupt_after(proc, cache, at_least: int, sig) -> None:
    deadline = time.monotonic() + 60
    while _entries(cache) < at_least:
        assert proc.poll() is None, f"the build ended before it was interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "no entries written within 60 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=30)


def _integrity(cache) -> str:
    db = sqlite3.connect(cache)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def test_killed_and_interrupted_builds_keep_every_entry_for_the_next_run(tmp_path):
    (tmp_path / "deep.py").write_text(MODEL)
    cache = tmp_path / "t.sqlite"

    killed = _start(tmp_path, cache)
    _interrupt_after(killed, cache, 20, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    after_kill = _entries(cache)
    assert after_kill >= 20 and _integrity(cache) == "ok"

    stopped = _start(tmp_path, cache)
    _interrupt_after(stopped, cache, after_kill + 20, signal.SIGINT)
    err = stopped.stderr.read()
    assert stopped.returncode == 130 and err.strip().endswith("hwprune: interrupted") and "Traceback" not in err
    after_int = _entries(cache)
    assert after_int >= after_kill + 20 and _integrity(cache) == "ok"

    final = _start(tmp_path, cache)
    out, err = final.communicate(timeout=90)
    assert final.returncode == 0, err
    m = re.search(r"(\d+) entries measured, (\d+) reused from the cache", out)
    assert m, out
    measured, reused = int(m[1]), int(m[2])
    assert reused == after_int and measured > 0  # everything written before was reused; the rest measured now
    total = _entries(cache)
    assert after_int < total <= after_int + measured  # a re-timed outlier replaces its entry, adds none
    assert f"{total} entries for this device" in out and _integrity(cache) == "ok"
