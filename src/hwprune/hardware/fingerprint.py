"""Identify the machine a measurement was taken on (MEASURING.md, rule 7)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import lru_cache

import torch

from hwprune.hardware.timing import FAST_PROTOCOL, TimingProtocol


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores (not hyper-threads): the default thread count of the CPU target."""
    try:
        seen = set()
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    seen.add((phys, core))
                    phys = core = None
        if core is not None:
            seen.add((phys, core))
        if seen:
            return len(seen)
    except OSError:
        pass
    return os.cpu_count() or 1


def timing_mode(*protocols: TimingProtocol) -> str:
    """'fast' if any of a target's protocols is the tests' FAST_PROTOCOL (HWPRUNE_TIMING=fast), else 'standard'.

    Part of every fingerprint: a table timed over 3 calls is noise, and without the mode in the device key a
    later real run reused 444 of its 445 entries as if they were measured.
    """
    return "fast" if any(p == FAST_PROTOCOL for p in protocols) else "standard"


def fingerprint(threads: int, dtype: str = "float32", runtime: str = "torch-eager", timing: str = "standard") -> dict:
    """What a latency figure depends on, apart from the layer itself (`timing`: see timing_mode)."""
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "threads": threads,
        "runtime": runtime,
        "torch": torch.__version__.split("+")[0],
        "dtype": dtype,
        "timing": timing,
    }


def fingerprint_key(fp: dict) -> str:
    """A short stable hash of a fingerprint, the cache's device key."""
    return hashlib.sha1(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
