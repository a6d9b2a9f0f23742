"""`hwprune serve`: time what a `--target remote:HOST:PORT/RUNTIME` sends, on this machine."""

from __future__ import annotations

import argparse
import os

from hwprune.core.errors import HwpruneError
from hwprune.hardware.serve import serve
from hwprune.hardware.wire import DEFAULT_MAX_BYTES, TOKEN_ENV


def serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--token", default=None, help=f"the token clients must send (default: ${TOKEN_ENV})")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: physical cores)")
    p.add_argument(
        "--max-mb",
        type=float,
        default=DEFAULT_MAX_BYTES / 2**20,
        help=f"largest request accepted, MiB (default {DEFAULT_MAX_BYTES // 2**20})",
    )


def cmd_serve(a: argparse.Namespace) -> int:
    token = a.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise HwpruneError(f"hwprune serve needs a token: set {TOKEN_ENV} (or pass --token)")
    if not 0 < a.port < 65536:
        raise HwpruneError(f"--port {a.port}: give a port between 1 and 65535")
    if a.threads is not None and a.threads < 1:
        raise HwpruneError(f"--threads {a.threads}: give at least 1")
    if a.max_mb <= 0:
        raise HwpruneError(f"--max-mb {a.max_mb}: give a positive size")
    serve(token, a.host, a.port, a.threads, int(a.max_mb * 2**20))
    return 0
