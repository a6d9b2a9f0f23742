"""What the CLI checks before a run starts: that `--out` can be written, and that the example batch fits in
memory. Both fail in one line at once, not after minutes of pruning (or an out-of-memory kill)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from hwprune.core.errors import HwpruneError
from hwprune.report.files import prepare_out
from hwprune.zoo.specs import ResolvedModel, resolve


def check_out(out: str | Path) -> Path:
    """Refuse an `--out` that the end of the run could not write: a directory that is not an earlier hwprune
    output, a path under a file, or one in a directory this user cannot write (probed by creating, then
    removing, a temporary directory where the output's temporary sibling will go)."""
    out = prepare_out(out, overwrite=True)  # `hwprune prune --out` replaces an earlier output of its own
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise HwpruneError(f"--out {out}: {parent} is a file, not a directory; choose another path")
    try:
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent)
    except OSError as e:
        why = f"cannot write in {parent} ({e.strerror})"
        raise HwpruneError(f"--out {out}: {why}; choose a writable directory") from None
    os.rmdir(probe)
    return out


def _available_bytes() -> int | None:
    """Memory available to a new allocation (Linux: MemAvailable), else physical memory; None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def resolve_checked(
    spec: str, batch_size: int, input_shape: str | None, progress: bool = True, seq_len: int | None = None
) -> ResolvedModel:
    """`zoo.specs.resolve`, with a batch size checked against memory first: the model is resolved at batch 1,
    the example batch's size estimated from one sample, and a batch that would not fit is refused before
    it is allocated."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HwpruneError(f"--batch-size {batch_size!r}: give a whole number, at least 1")
    one = resolve(spec, 1, input_shape, progress, seq_len=seq_len)
    if batch_size == 1:
        return one
    sample = one.example_inputs
    if isinstance(sample, torch.Tensor):
        need = batch_size * sample[:1].numel() * sample.element_size()
        have = _available_bytes()
        if have is not None and need > have:
            raise HwpruneError(
                f"--batch-size {batch_size}: the example batch alone needs about {_format_bytes(need)}, "
                f"this machine has {_format_bytes(have)} available; give a smaller --batch-size"
            )
    return resolve(spec, batch_size, input_shape, progress, seq_len=seq_len)
