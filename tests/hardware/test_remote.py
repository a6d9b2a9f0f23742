"""`hwprune serve` in a subprocess on 127.0.0.1 and the `remote:` target that uses it."""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.hardware.targets import get_target
from hwprune.hardware.wire import pack

TOKEN = "test-token-5f2c"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = {**os.environ, "HWPRUNE_TOKEN": TOKEN, "HWPRUNE_TIMING": "fast"}
    cmd = [sys.executable, "-m", "hwprune", "serve", "--port", str(port), "--threads", "1", "--max-mb", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()  # printed once the server is about to listen
    assert "listening on" in line, line
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port, proc
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture()
def token(monkeypatch):
    monkeypatch.setenv("HWPRUNE_TOKEN", TOKEN)


def _post(port, body: bytes, token: str | None = TOKEN) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/time", data=body)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_remote_target_times_layers_and_models_on_the_server(server, token):
    port, _ = server
    target = get_target(f"remote:127.0.0.1:{port}/ort")
    fp = target.fingerprint()
    assert fp["runtime"].startswith("onnxruntime") and fp["threads"] == 1 and fp["timing"] == "fast"
    # The same device key as the local target with the same settings: tables carry over.
    assert target.device_key() == get_target("cpu-ort", threads=1).device_key()
    t = target.time_layer(nn.Conv2d(8, 16, 3, padding=1), torch.randn(1, 8, 16, 16))
    assert t.n == 3 and 0 < t.median < 1
    big = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256))  # 0.4 MB: under --max-mb 1
    small = nn.Linear(128, 10)
    tb, ts, tb2 = target.time_models([big, small, big], torch.randn(4, 128))
    assert tb.n == ts.n == 3 and tb is tb2  # a model given twice is sent and timed once
    assert get_target(f"remote:127.0.0.1:{port}/ort-int8").fingerprint()["dtype"].startswith("int8")


def test_requests_without_the_token_are_refused(server, monkeypatch):
    port, _ = server
    layer_req = pack([b"\x08\x01"], {})
    assert _post(port, layer_req, token=None) == 401
    assert _post(port, layer_req, token="wrong") == 401
    monkeypatch.setenv("HWPRUNE_TOKEN", "wrong")
    with pytest.raises(HwpruneError, match="401"):
        get_target(f"remote:127.0.0.1:{port}/ort").fingerprint()


def test_the_server_survives_malformed_and_oversized_requests(server, token):
    port, proc = server
    assert _post(port, b"not safetensors at all") == 400
    assert _post(port, pack([b"not an onnx graph"], {})) == 400  # ORT refuses it: 400, not a crash
    assert _post(port, b"\0" * (2 * 2**20)) == 413  # --max-mb 1
    assert proc.poll() is None
    t = get_target(f"remote:127.0.0.1:{port}/ort").time_layer(nn.Linear(8, 8), torch.randn(1, 8))
    assert t.n == 3  # still serving


def test_prune_against_the_server_meets_its_budget(server, token, tiny_file):
    from hwprune.cli.run import run_options

    port, _ = server
    cfg = dict(
        model=f"{tiny_file}:tiny_resnet", budget="latency=1s", target=f"remote:127.0.0.1:{port}/ort", max_iters=2
    )
    r = run_options(cfg, progress=False).report
    assert r.budget.met and r.latency_table.entries_measured > 0 and len(r.loop) == 2
    assert r.fingerprint["threads"] == 1  # the server's, whatever this side has


def test_bad_remote_names_and_a_missing_token_are_one_line_errors(monkeypatch):
    monkeypatch.delenv("HWPRUNE_TOKEN", raising=False)
    with pytest.raises(HwpruneError, match="remote:HOST:PORT/RUNTIME"):
        get_target("remote:nowhere")
    with pytest.raises(HwpruneError, match="choose one of"):
        get_target("remote:127.0.0.1:1/tflite")
    with pytest.raises(HwpruneError, match="set HWPRUNE_TOKEN"):
        get_target("remote:127.0.0.1:1/ort")
    monkeypatch.setenv("HWPRUNE_TOKEN", "x")
    with pytest.raises(HwpruneError, match="cannot reach the server"):
        get_target(f"remote:127.0.0.1:{_free_port()}/ort")
