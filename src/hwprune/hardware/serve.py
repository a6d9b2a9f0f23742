"""`hwprune serve`: run on the device, time what a `remote:` target sends, with the local targets' protocol.

An aiohttp server (concurrent connections, bounded request size): every request carries the token
(`Authorization: Bearer ...`, compared in constant time), bodies are safetensors only (`wire`), and one
timing runs at a time, in a worker thread, so the event loop keeps answering (a refused or malformed
request while a timing runs does not wait for it, and does not disturb it beyond parsing a header).
"""

from __future__ import annotations

import asyncio
import hmac

import onnxruntime as ort
from aiohttp import web

from hwprune.core.errors import HwpruneError
from hwprune.hardware.ort import PROVIDER, OrtCpuTarget, session_options
from hwprune.hardware.timing import Timing, time_interleaved
from hwprune.hardware.wire import (
    DEFAULT_MAX_BYTES,
    PROTOCOL_VERSION,
    PROTOCOLS,
    WireError,
    timing_to_json,
    unpack,
)


class TimingServer:
    """The device side: an ORT CPU target whose fingerprint and protocols every timing uses."""

    def __init__(self, token: str, threads: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        if not token:
            raise HwpruneError("hwprune serve needs a token: set HWPRUNE_TOKEN (or pass --token)")
        self.token = token
        self.target = OrtCpuTarget(threads=threads)
        self.max_bytes = max_bytes
        self.lock = asyncio.Lock()
        self.served = 0

    def _authorized(self, request: web.Request) -> bool:
        got = request.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode())

    def _refuse(self, request: web.Request) -> web.Response | None:
        if not self._authorized(request):
            return web.json_response({"error": "missing or wrong token (Authorization: Bearer ...)"}, status=401)
        return None

    async def info(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        return web.json_response(
            {"protocol": PROTOCOL_VERSION, "runtime": "ort", "fingerprint": self.target.fingerprint()}
        )

    def _time(self, graphs: list[bytes], feeds: dict, which: str) -> list[Timing]:
        fns = []
        for i, g in enumerate(graphs):
            try:
                session = ort.InferenceSession(g, session_options(self.target.threads), providers=[PROVIDER])
            except Exception as e:
                raise WireError(f"graph_{i} does not load in ONNX Runtime: {str(e).strip()[:200]}") from None
            missing = [x.name for x in session.get_inputs() if x.name not in feeds]
            if missing:
                raise WireError(f"graph_{i} needs inputs {missing} the request does not hold")
            feed = {x.name: feeds[x.name] for x in session.get_inputs()}
            try:
                session.run(None, feed)
            except Exception as e:
                raise WireError(f"graph_{i} does not run on the inputs sent: {str(e).strip()[:200]}") from None
            fns.append(lambda s=session, f=feed: s.run(None, f))
        t = self.target
        protocol = t.table_protocol if which == "table" else t.protocol(final=which == "final")
        return time_interleaved(fns, protocol)

    async def time(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        which = request.headers.get("X-Hwprune-Protocol", "model")
        if which not in PROTOCOLS:
            return web.json_response({"error": f"X-Hwprune-Protocol must be one of {PROTOCOLS}"}, status=400)
        try:
            body = await request.read()  # past client_max_size aiohttp answers 413 itself
            graphs, feeds = unpack(body)
            async with self.lock:  # one timing at a time: two would share the cores
                timings = await asyncio.get_running_loop().run_in_executor(None, self._time, graphs, feeds, which)
        except WireError as e:
            return web.json_response({"error": str(e)}, status=400)
        self.served += 1
        return web.json_response({"timings": [timing_to_json(x) for x in timings]})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_bytes)
        app.add_routes([web.get("/v1/info", self.info), web.post("/v1/time", self.time)])
        return app


def serve(
    token: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    threads: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> None:
    """Serve until interrupted. Prints one line with where it listens and the fingerprint's key."""
    server = TimingServer(token, threads, max_bytes)
    fp = server.target.fingerprint()
    print(
        f"hwprune serve: listening on http://{host}:{port} ({fp['cpu']}, {fp['threads']} threads, "
        f"onnxruntime {ort.__version__}, device key {server.target.device_key()}); max request "
        f"{max_bytes / 2**20:.0f} MiB",
        flush=True,
    )
    web.run_app(server.app(), host=host, port=port, print=None, handle_signals=True)


__all__ = ["TimingServer", "serve"]
