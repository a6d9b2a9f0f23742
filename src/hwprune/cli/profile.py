"""Latency-table profiles: build one ahead of a prune, share it between machines, inspect a cache.

`build_profile` measures (or completes) the table a `hwprune prune` of the same model would need;
`export_profile` / `import_profile` move tables between machines as JSON (gzipped when the file
name ends `.gz`); `profile_info` lists the devices a cache holds. The table is keyed by device
fingerprint, so an imported table is used only where the fingerprint matches (same CPU model,
threads, runtime, torch version and dtype): a fleet of identical machines can profile once.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hwprune.core.errors import HwpruneError
from hwprune.hardware.table import SCHEMA_VERSION, DeviceSummary, Entry, LatencyCache, MergeCounts, default_cache_path

#: The format tag of an exported table file.
FORMAT = "hwprune-latency-table"
#: With no --model, `hwprune profile` builds the demo's table (its model at its batch size).
DEFAULT_MODEL = "example:mnist1d"
DEFAULT_BATCH = 64


@dataclass(frozen=True)
class ProfileResult:
    model: str
    target: str
    device: str
    input_shape: tuple[int, ...]
    layers: int  # timed layers of the model
    measured: int  # entries measured by this run
    reused: int  # entries found in the cache
    device_entries: int  # entries this device has in the cache now
    seconds: float
    cache: Path
    moved_aside: Path | None  # where --rebuild moved an unreadable cache


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


def _default_min_keep() -> float:
    from hwprune.pipeline.prune import PruneConfig

    return next(f.default for f in fields(PruneConfig) if f.name == "min_keep")


def _architecture(spec: str, batch_size: int, input_shape: str | None, progress: bool):
    """The model and example inputs. The table depends on layer shapes only, so a built-in example is
    profiled untrained: `resolve` would train it first (minutes) for weights the table never reads."""
    if not spec.startswith("example:"):
        from hwprune.zoo.specs import resolve

        resolved = resolve(spec, batch_size, input_shape, progress)
        return resolved.model, resolved.example_inputs

    import torch

    from hwprune.core.modules import call
    from hwprune.zoo.datasets import get_dataset
    from hwprune.zoo.examples import get_example
    from hwprune.zoo.specs import parse_shape

    if batch_size < 1:
        raise HwpruneError("--batch-size must be at least 1")
    ex = get_example(spec.split(":", 1)[1])
    shape = parse_shape(input_shape) if input_shape else get_dataset(ex.data).sample_shape
    model = ex.build().eval()
    example = torch.randn((batch_size, *shape))
    try:
        with torch.no_grad():
            call(model, example)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HwpruneError(f"input of shape {tuple(example.shape)} does not fit {spec}: {msg[:200]}") from None
    return model, example


def build_profile(
    model: str | None = None,
    target: str = "cpu",
    batch_size: int | None = None,
    input_shape: str | None = None,
    threads: int | None = None,
    min_keep: float | None = None,
    cache: str | Path | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> ProfileResult:
    """Measure every table entry a prune of `model` on `target` needs that the cache lacks.

    `model` None: the demo's model at the demo's batch size. `min_keep` (default: prune's) sets the
    narrowest width profiled, so it should match the later prune's `--min-keep`.
    """
    from hwprune.cost.model import Profiler
    from hwprune.groups.analysis import analyze
    from hwprune.hardware.targets import get_target

    spec = model or DEFAULT_MODEL
    batch = batch_size if batch_size is not None else (DEFAULT_BATCH if model is None else 1)
    min_keep = _default_min_keep() if min_keep is None else min_keep
    if not 0 < min_keep <= 1:
        raise HwpruneError("--min-keep must be in (0, 1]")
    tgt = get_target(target, threads=threads)
    dense, example = _architecture(spec, batch, input_shape, progress)
    analysis = analyze(dense, example, min_keep)
    with LatencyCache(cache, rebuild=rebuild) as table:
        t0 = time.perf_counter()
        profiler = Profiler(tgt, table, progress)
        profiler.build(analysis)
        seconds = time.perf_counter() - t0
        return ProfileResult(
            model=spec,
            target=target,
            device=profiler.device,
            input_shape=tuple(example.shape) if hasattr(example, "shape") else (),
            layers=len(analysis.layers),
            measured=profiler.measured,
            reused=table.hits,
            device_entries=table.count(profiler.device),
            seconds=seconds,
            cache=table.path,
            moved_aside=table.moved_aside,
        )


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
    from hwprune import __version__

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
        "hwprune_version": __version__,
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
_SUMMARY_KEYS = ("gpu", "device", "cpu", "runtime", "threads", "torch", "dtype")


def describe_fingerprint(fp: dict) -> str:
    """One line for a human: the fields that tell machines apart."""
    shown = [k for k in _SUMMARY_KEYS if k in fp] or sorted(fp)
    return ", ".join(f"{fp[k]} threads" if k == "threads" else f"{k} {fp[k]}" for k in shown) or "no fingerprint"
