"""Training checkpoints a SIGKILL cannot half-write: tensors in safetensors, everything else in JSON.

A checkpoint directory holds `step-NNNNNNNN/` folders (`state.safetensors` + `state.json`) and a `latest`
file naming the newest complete one. A folder is written under a temporary name, flushed to disk and
renamed; `latest` is replaced the same way; older folders go only after that. A process killed at any
instant therefore leaves either the previous checkpoint or the new one, never a torn one. Nothing is
pickled: loading a checkpoint runs no code from it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hwprune.core.errors import HwpruneError
from hwprune.core.files import atomic_directory, write_file_atomic

LATEST = "latest"
STATE_TENSORS, STATE_JSON = "state.safetensors", "state.json"
FORMAT = "hwprune-checkpoint/1"


def save(directory: str | Path, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Checkpoint `step` into `directory` atomically; the previous checkpoints are removed after it lands."""
    directory = Path(directory)
    name = f"step-{step:08d}"

    with atomic_directory(directory / name, fsync=True) as tmp:
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps({"format": FORMAT, "step": step, **meta}))
    write_file_atomic(directory / LATEST, name)
    for old in directory.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return directory / name


def load(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, meta) of the newest checkpoint in `directory`; None when none was written yet.

    A `latest` that names a missing or damaged folder is refused in one line.
    """
    directory = Path(directory)
    pointer = directory / LATEST
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    where = directory / name
    try:
        meta = json.loads((where / STATE_JSON).read_text())
        tensors = load_file(str(where / STATE_TENSORS))
    except (OSError, ValueError) as e:
        why = type(e).__name__
        raise HwpruneError(f"checkpoint {where} is damaged or incomplete ({why}); start the run again") from None
    except Exception as e:  # safetensors raises its own error types on a cut-short file
        raise HwpruneError(f"checkpoint {where} is damaged ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HwpruneError(f"checkpoint {where}: not an hwprune checkpoint (format {meta.get('format')!r})")
    return tensors, meta


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every random generator training draws from: torch (CPU and CUDA), numpy and Python's."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    version, state, gauss_next = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [version, list(state), gauss_next]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss_next = meta["python"]
    random.setstate((version, tuple(state), gauss_next))


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state_dict split into tensors (per-parameter buffers) and JSON (the rest)."""
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                plain.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, entry in meta["plain"].items():
        state.setdefault(int(pid), {}).update(entry)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
