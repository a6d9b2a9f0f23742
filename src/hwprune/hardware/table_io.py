"""Latency tables as files: export a cache's tables, import them on another machine, list a cache's devices.

`export_profile` / `import_profile` move tables between machines as JSON (gzipped when the file name ends
`.gz`); `read_profile_file` validates such a file before anything is written; `profile_info` lists the
devices a cache holds and `describe_fingerprint` names one in a line. The table is keyed by device
fingerprint, so an imported table is used only where the fingerprint matches (same CPU model, threads,
runtime, torch version and dtype): a fleet of identical machines can profile once.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from hwprune.core.errors import HwpruneError
from hwprune.hardware.table import SCHEMA_VERSION, DeviceSummary, Entry, LatencyCache, MergeCounts, default_cache_path

#: The format tag of an exported table file.
FORMAT = "hwprune-latency-table"


def _hwprune_version() -> str:
    """The installed hwprune's version, as `hwprune.__version__` reads it (that package is above this layer)."""
    try:
        return version("hwprune")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    devices: list[str]
    entries: int


@dataclass(frozen=True)
class ImportResult:
    cache: Path
    devices: list[str]
    counts: MergeCounts


def _existing_cache(cache: str | Path | None) -> Path:
    path = Path(cache) if cache else default_cache_path()
    if not path.is_file():
        raise HwpruneError(f"no latency cache at {path}; run `hwprune profile` first (or pass --cache FILE)")
    return path


def _pick_devices(known: Sequence[str], wanted: Sequence[str] | None, path: Path) -> list[str]:
    """Devices by exact key or unique prefix (keys are 16 hex digits; `hwprune profile info` lists them)."""
    if not wanted:
        return list(known)
    out = []
    for w in wanted:
        hits = [k for k in known if k == w] or [k for k in known if k.startswith(w)]
        if len(hits) != 1:
            what = "matches several devices" if hits else "is not a device"
            raise HwpruneError(f"--device {w} {what} in {path}; devices: {', '.join(known) or 'none'}")
        out.append(hits[0])
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    if not path.parent.is_dir():
        raise HwpruneError(f"cannot write {path}: directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise HwpruneError(f"cannot write {path} ({e.strerror or e})") from None


def export_profile(
    file: str | Path, cache: str | Path | None = None, devices: Sequence[str] | None = None
) -> ExportResult:
    """Write the cache's tables (all devices, or `devices` by key or key prefix) to `file`."""
    path = Path(file)
    with LatencyCache(_existing_cache(cache)) as table:
        fps = table.devices()
        keys = _pick_devices(sorted(fps), devices, table.path)
        blocks = []
        for key in keys:
            entries = table.entries(key)
            if entries:
                blocks.append({"device": key, "fingerprint": fps[key], "entries": [asdict(e) for e in entries]})
        if not blocks:
            raise HwpruneError(f"latency cache {table.path} has no entries to export; run `hwprune profile` first")
    doc = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "hwprune_version": _hwprune_version(),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "devices": blocks,
    }
    data = json.dumps(doc, indent=1).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    _atomic_write(path, data)
    return ExportResult(path, [b["device"] for b in blocks], sum(len(b["entries"]) for b in blocks))


def _number(x, name: str, where: str, minimum: float = 0.0) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < minimum:
        raise HwpruneError(f"{where}: '{name}' must be a finite number >= {minimum:g}, got {x!r}")
    return float(x)


def _integer(x, name: str, where: str, minimum: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < minimum:
        raise HwpruneError(f"{where}: '{name}' must be an integer >= {minimum}, got {x!r}")
    return x


def _entry(d, where: str) -> Entry:
    if not isinstance(d, dict):
        raise HwpruneError(f"{where}: an entry must be an object, got {type(d).__name__}")
    missing = [f.name for f in fields(Entry) if f.name not in d]
    if missing:
        raise HwpruneError(f"{where}: an entry lacks {', '.join(missing)}")
    if not isinstance(d["signature"], str) or not d["signature"]:
        raise HwpruneError(f"{where}: an entry's 'signature' must be a non-empty string")
    return Entry(
        signature=d["signature"],
        cin=_integer(d["cin"], "cin", where, 0),
        cout=_integer(d["cout"], "cout", where, 1),
        median=_number(d["median"], "median", where),
        iqr=_number(d["iqr"], "iqr", where),
        n=_integer(d["n"], "n", where, 1),
        created=_number(d["created"], "created", where),
    )


def read_profile_file(file: str | Path) -> dict[str, tuple[dict, list[Entry]]]:
    """Parse and validate an exported table file: device key -> (fingerprint, entries)."""
    path = Path(file)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise HwpruneError(f"{path} not found") from None
    except OSError as e:
        raise HwpruneError(f"cannot read {path} ({e.strerror or e})") from None
    try:
        if raw[:2] == b"\x1f\x8b":  # gzip magic: the content decides, not the file name
            raw = gzip.decompress(raw)
        doc = json.loads(raw.decode("utf-8"))
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise HwpruneError(f"{path} is not an hwprune latency table (unreadable: {first})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise HwpruneError(f"{path} is not an hwprune latency table (no '{FORMAT}' format tag)")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise HwpruneError(
            f"{path} holds a schema {version!r} table, this hwprune reads schema {SCHEMA_VERSION}; "
            "export it with a matching hwprune version"
        )
    blocks = doc.get("devices")
    if not isinstance(blocks, list):
        raise HwpruneError(f"{path}: 'devices' must be a list")
    out: dict[str, tuple[dict, list[Entry]]] = {}
    for i, b in enumerate(blocks):
        where = f"{path}, device #{i + 1}"
        if not isinstance(b, dict) or not isinstance(b.get("device"), str) or not b["device"]:
            raise HwpruneError(f"{where}: needs a non-empty 'device' key")
        if not isinstance(b.get("fingerprint"), dict) or not isinstance(b.get("entries"), list):
            raise HwpruneError(f"{where}: needs a 'fingerprint' object and an 'entries' list")
        if b["device"] in out:
            raise HwpruneError(f"{where}: device {b['device']} appears twice")
        out[b["device"]] = (b["fingerprint"], [_entry(e, where) for e in b["entries"]])
    return out


def import_profile(file: str | Path, cache: str | Path | None = None) -> ImportResult:
    """Merge an exported table file into the cache, all or nothing; the later-measured entry wins a conflict."""
    devices = read_profile_file(file)  # validated before the cache is opened: a bad file writes nothing
    with LatencyCache(cache) as table:
        counts = table.merge(devices)
        return ImportResult(table.path, sorted(devices), counts)


def profile_info(cache: str | Path | None = None) -> tuple[Path, list[DeviceSummary]]:
    """The cache file and a summary of every device it holds."""
    with LatencyCache(_existing_cache(cache)) as table:
        return table.path, table.summary()


#: Fingerprint fields shown first in summaries (CPU, GPU and simulator targets each have some of them).
_SUMMARY_KEYS = ("gpu", "device", "cpu", "runtime", "threads", "torch", "dtype", "timing")


def describe_fingerprint(fp: dict) -> str:
    """One line for a human: the fields that tell machines apart."""
    shown = [k for k in _SUMMARY_KEYS if k in fp] or sorted(fp)
    return ", ".join(f"{fp[k]} threads" if k == "threads" else f"{k} {fp[k]}" for k in shown) or "no fingerprint"
