"""What `hwprune serve` and the `remote:` target send each other: ONNX graphs and input arrays packed as
safetensors (parsed without running code: never a pickle), timings back as JSON.

A request to time holds `graph_0 .. graph_{k-1}` (serialized ONNX models as uint8 arrays) and one
`input:NAME` array per model input; the `X-Hwprune-Protocol` header says which timing protocol applies
(`table` for a latency-table entry, `model` or `final` for whole models, interleaved).
"""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load, save

from hwprune.hardware.timing import Timing, summary

PROTOCOL_VERSION = 1
PROTOCOLS = ("table", "model", "final")
TOKEN_ENV = "HWPRUNE_TOKEN"
#: Largest request the server reads (bytes): a ResNet-50 graph is 102 MB in float32, 26 MB in int8.
DEFAULT_MAX_BYTES = 256 * 2**20
#: Most graphs one request may time together (interleaved timing of a few models).
MAX_GRAPHS = 8


class WireError(ValueError):
    """A request or reply that is not what the protocol says (the server answers 400 with the message)."""


def pack(graphs: list[bytes], feeds: dict[str, np.ndarray]) -> bytes:
    tensors = {f"graph_{i}": np.frombuffer(g, dtype=np.uint8) for i, g in enumerate(graphs)}
    tensors.update({f"input:{k}": np.ascontiguousarray(v) for k, v in feeds.items()})
    return save(tensors)


def unpack(body: bytes) -> tuple[list[bytes], dict[str, np.ndarray]]:
    """(graphs, feeds) of a request body; WireError if it is anything else."""
    try:
        tensors = load(body)
    except Exception as e:
        raise WireError(f"the body is not a safetensors container ({type(e).__name__})") from None
    n = sum(k.startswith("graph_") for k in tensors)
    if not 1 <= n <= MAX_GRAPHS or any(f"graph_{i}" not in tensors for i in range(n)):
        raise WireError(f"expected graph_0 .. graph_{{k-1}}, 1 <= k <= {MAX_GRAPHS}")
    graphs = []
    for i in range(n):
        g = tensors[f"graph_{i}"]
        if g.dtype != np.uint8 or g.ndim != 1:
            raise WireError(f"graph_{i} must be a 1-D uint8 array (the ONNX bytes)")
        graphs.append(g.tobytes())
    feeds = {k.removeprefix("input:"): v for k, v in tensors.items() if k.startswith("input:")}
    extra = set(tensors) - {f"graph_{i}" for i in range(n)} - {f"input:{k}" for k in feeds}
    if extra:
        raise WireError(f"unexpected entries {sorted(extra)[:3]}")
    return graphs, feeds


def timing_to_json(t: Timing) -> dict:
    return {"samples": list(t.samples), "stopped": t.stopped}


def timing_from_json(d) -> Timing:
    try:
        samples = [float(s) for s in d["samples"]]
        stopped = str(d.get("stopped", "calls"))
    except (KeyError, TypeError, ValueError):
        raise WireError("the server's reply holds no timing samples") from None
    if not samples or min(samples) <= 0:
        raise WireError("the server's reply holds no positive timing samples")
    return summary(samples, stopped)
