"""Shared bits of the benchmark scripts: run one prune configuration, print a markdown table."""

from __future__ import annotations

import json
import time
from pathlib import Path


def run(cfg_kwargs: dict, progress: bool = False) -> dict:
    from hwprune.cli.run import run_options

    t0 = time.perf_counter()
    result = run_options(cfg_kwargs, progress=progress)
    r = result.report.to_dict()
    r["wall_s"] = time.perf_counter() - t0
    return r


def table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def save(path: str | None, payload) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=1))
