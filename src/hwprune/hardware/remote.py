"""`remote:HOST:PORT/RUNTIME`: a device reached over the network, where `hwprune serve` runs.

Layers (for the table) and whole models (for the closed loop) are exported to ONNX here, quantized here
for an int8 runtime (the device needs only onnxruntime), sent, and timed there with the same protocols
and fingerprint as a local `cpu-ort` target: a table built remotely has the same device key as one built
on the device itself. The token comes from HWPRUNE_TOKEN on both sides.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from functools import cached_property

import torch
import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.hardware.fingerprint import fingerprint_key
from hwprune.hardware.ort import input_arrays, timing_graph
from hwprune.hardware.targets import register_resolver
from hwprune.hardware.timing import Timing
from hwprune.hardware.wire import PROTOCOL_VERSION, TOKEN_ENV, WireError, pack, timing_from_json

#: Runtime name -> (int8 mode or None, the dtype the fingerprint records, as the local ORT targets do).
RUNTIMES = {
    "ort": (None, "float32"),
    "ort-int8": ("static", "int8-static-qdq-u8s8"),
    "ort-int8-dynamic": ("dynamic", "int8-dynamic"),
}
#: Seconds a request may take: a final measurement of a large model runs for a minute or more.
TIMEOUT_S = 900.0


class RemoteTarget:
    """A device running `hwprune serve`, timing ONNX Runtime graphs."""

    description = "a device running `hwprune serve`, over the network (remote:HOST:PORT/ort|ort-int8)"

    def __init__(
        self,
        host: str,
        port: int,
        runtime: str = "ort",
        token: str | None = None,
        threads: int | None = None,
        timeout: float = TIMEOUT_S,
    ):
        # `threads` is accepted for the pipeline's uniform call: the server's own --threads applies.
        if runtime not in RUNTIMES:
            raise HwpruneError(f"remote runtime '{runtime}': choose one of {', '.join(RUNTIMES)}")
        self.host, self.port, self.runtime, self.timeout = host, port, runtime, timeout
        self.name = f"remote:{host}:{port}/{runtime}"
        self.quantize, self.dtype = RUNTIMES[runtime]
        self.token = token or os.environ.get(TOKEN_ENV, "")
        if not self.token:
            raise HwpruneError(f"--target {self.name}: set {TOKEN_ENV} to the token `hwprune serve` was started with")
        self.threads = int(self._info["fingerprint"].get("threads", 1))

    def _request(self, path: str, body: bytes | None = None, protocol: str | None = None) -> dict:
        req = urllib.request.Request(f"http://{self.host}:{self.port}{path}", data=body)
        req.add_header("Authorization", f"Bearer {self.token}")
        if protocol:
            req.add_header("X-Hwprune-Protocol", protocol)
            req.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 413:
                raise HwpruneError(
                    f"{self.name}: the request ({len(body or b'') / 2**20:.1f} MiB) is larger than the server "
                    "accepts; start `hwprune serve` with a larger --max-mb"
                ) from None
            try:
                why = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                why = e.reason
            raise HwpruneError(f"{self.name}: the server answered {e.code}: {why}") from None
        except (urllib.error.URLError, OSError) as e:
            why = getattr(e, "reason", e)
            raise HwpruneError(f"{self.name}: cannot reach the server ({why}); is `hwprune serve` running?") from None

    @cached_property
    def _info(self) -> dict:
        info = self._request("/v1/info")
        if info.get("protocol") != PROTOCOL_VERSION:
            raise HwpruneError(
                f"{self.name}: the server speaks protocol {info.get('protocol')}, "
                f"this hwprune {PROTOCOL_VERSION}; install the same hwprune version on both"
            )
        return info

    def fingerprint(self) -> dict:
        return {**self._info["fingerprint"], "dtype": self.dtype}

    def device_key(self) -> str:
        return fingerprint_key(self.fingerprint())

    def _graph(self, model: nn.Module, inputs) -> bytes:
        return timing_graph(model, inputs, self.quantize)

    def _time(self, graphs: list[bytes], inputs, protocol: str) -> list[Timing]:
        reply = self._request("/v1/time", pack(graphs, input_arrays(inputs)), protocol)
        try:
            timings = [timing_from_json(t) for t in reply["timings"]]
        except (KeyError, TypeError, WireError) as e:
            raise HwpruneError(f"{self.name}: unexpected reply from the server ({e})") from None
        if len(timings) != len(graphs):
            raise HwpruneError(f"{self.name}: asked for {len(graphs)} timings, got {len(timings)}")
        return timings

    def time_layer(self, layer: nn.Module, x: torch.Tensor) -> Timing:
        return self._time([self._graph(layer.eval(), x)], x, "table")[0]

    def time_models(self, models: Sequence[nn.Module], inputs, final: bool = False) -> list[Timing]:
        """Interleaved on the server (A B A B ...): each distinct model exported and sent once."""
        graphs: dict[int, bytes] = {}
        order = []
        for m in models:
            if id(m) not in graphs:
                graphs[id(m)] = self._graph(m.eval(), inputs)
            order.append(list(graphs).index(id(m)))
        timings = self.time_graphs(list(graphs.values()), inputs, final)
        return [timings[i] for i in order]

    def time_graphs(self, graphs: Sequence[bytes], inputs, final: bool = False) -> list[Timing]:
        """Serialized ONNX graphs (e.g. the files deployed), interleaved on the server."""
        return self._time(list(graphs), inputs, "final" if final else "model")


def _parse(name: str) -> tuple[str, int, str]:
    rest = name.removeprefix("remote:")
    where, _, runtime = rest.partition("/")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise HwpruneError(f"--target {name}: expected remote:HOST:PORT/RUNTIME, e.g. remote:127.0.0.1:8765/ort")
    return host, int(port), runtime or "ort"


@register_resolver
def resolve_remote(name: str):
    """`remote:HOST:PORT[/RUNTIME]` -> a factory for a RemoteTarget (RUNTIME: ort, ort-int8, ...)."""
    if not name.startswith("remote:"):
        return None
    host, port, runtime = _parse(name)
    return lambda threads=None, **kw: RemoteTarget(host, port, runtime, threads=threads, **kw)


resolve_remote.entries = lambda: [("remote:HOST:PORT/RUNTIME", RemoteTarget.description)]
