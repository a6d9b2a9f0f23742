"""Compressed storage of masked weights: a bitmask plus the kept values, or CSR, whichever is smaller.

`export.write_model` calls `split_sparse` for a model with masks (`hwprune.sparsity.apply_masks`): each
masked weight leaves `model.safetensors` and goes to `sparse.safetensors` in the smallest of three
encodings, and spec.json gets a "sparse" key saying which. A model without masks is saved exactly as
before, and a spec without the key loads as before.

Bytes per weight at density d (kept fraction), value size b bytes:
- dense: b
- bitmask: 1/8 + d*b (packed bits, `numpy.packbits`, then the kept values in row-major order)
- CSR: d*(b + i) + 4*(rows + 1)/n, i = 2 (int16 column indices) when a row has <= 32,767 columns
CSR wins over the bitmask below d = 1/(8i) (6.25% kept with int16 indices); at 90% sparsity in fp32 the
bitmask gives 0.1*32 + 1 = 4.2 bits per weight, 0.13x dense.

Decoding rebuilds weight.masked_fill(~mask, 0) bit for bit: kept values are copied as stored (a kept
-0.0 stays -0.0), pruned ones are +0.0. The masks come back too, so fine-tuning a loaded model keeps them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from hwprune.apply.masks import apply_masks, masked_modules
from hwprune.core.errors import HwpruneError

SPARSE_FILE = "sparse.safetensors"
_INDEX_INT16_MAX = 32767


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dt, torch.dtype):
        raise HwpruneError(f"saved sparse tensor has unknown dtype {name!r}")
    return dt


def encoded_sizes(shape: tuple[int, ...], nnz: int, element_size: int) -> dict[str, int]:
    """Bytes each encoding takes for a tensor of `shape` with `nnz` kept values."""
    n = math.prod(shape)
    rows = shape[0] if shape else 1
    cols = n // max(rows, 1)
    index = 2 if cols <= _INDEX_INT16_MAX else 4
    crow = 4 if nnz < 2**31 else 8
    return {
        "dense": n * element_size,
        "bitmask": math.ceil(n / 8) + nnz * element_size,
        "csr": (rows + 1) * crow + nnz * (index + element_size),
    }


def encode(weight: torch.Tensor, mask: torch.Tensor) -> tuple[str, dict[str, torch.Tensor]]:
    """(format, parts) for weight with the pruned (mask False) entries dropped; format is the smallest.

    Ties go to dense, then bitmask: the simpler layout.
    """
    w = weight.detach().cpu().contiguous()
    keep = mask.detach().cpu().bool().reshape(w.shape)
    nnz = int(keep.sum())
    sizes = encoded_sizes(tuple(w.shape), nnz, w.element_size())
    fmt = min(("dense", "bitmask", "csr"), key=lambda f: sizes[f])
    if fmt == "dense":
        return fmt, {"values": w.masked_fill(~keep, 0)}
    flat_keep = keep.flatten()
    values = w.flatten()[flat_keep].clone()
    if fmt == "bitmask":
        bits = np.packbits(flat_keep.numpy().astype(np.uint8))
        return fmt, {"bits": torch.from_numpy(bits), "values": values}
    rows = w.shape[0]
    k2 = flat_keep.reshape(rows, -1)
    counts = k2.sum(1)
    crow_dtype = torch.int32 if nnz < 2**31 else torch.int64
    crow = torch.zeros(rows + 1, dtype=crow_dtype)
    crow[1:] = torch.cumsum(counts, 0)
    col_dtype = torch.int16 if k2.shape[1] <= _INDEX_INT16_MAX else torch.int32
    col = k2.nonzero()[:, 1].to(col_dtype)  # row-major order, matching `values`
    return fmt, {"crow": crow, "col": col, "values": values}


def decode(fmt: str, parts: dict[str, torch.Tensor], shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of `encode`: the weight with pruned entries +0.0."""
    n = math.prod(shape)
    if fmt == "dense":
        return parts["values"].reshape(shape).to(dtype)
    values = parts["values"].to(dtype)
    if fmt == "bitmask":
        keep = torch.from_numpy(np.unpackbits(parts["bits"].numpy(), count=n).astype(bool))
    elif fmt == "csr":
        rows = shape[0]
        crow = parts["crow"].long()
        row_of = torch.repeat_interleave(torch.arange(rows), crow[1:] - crow[:-1])
        keep2 = torch.zeros(rows, n // rows, dtype=torch.bool)
        keep2[row_of, parts["col"].long()] = True
        keep = keep2.flatten()
    else:
        raise HwpruneError(f"saved sparse tensor has unknown format {fmt!r}")
    if int(keep.sum()) != values.numel():
        raise HwpruneError("saved sparse tensor is damaged: its mask and values disagree")
    out = torch.zeros(n, dtype=dtype)
    out[keep] = values
    return out.reshape(shape)


def mask_of(fmt: str, parts: dict[str, torch.Tensor], shape: list[int]) -> torch.Tensor:
    """The stored mask (for a dense entry: its nonzero entries)."""
    if fmt == "dense":
        return parts["values"].reshape(shape) != 0
    ones = {**parts, "values": torch.ones(parts["values"].numel(), dtype=torch.uint8)}
    return decode(fmt, ones, shape, torch.uint8).bool()


def split_sparse(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> dict | None:
    """Move the masked weights out of `state` into `directory/SPARSE_FILE`; return spec.json's "sparse" entry.

    None (and `state` untouched) when the model has no masks.
    """

    masked = masked_modules(model)
    if not masked:
        return None
    entries, tensors = {}, {}
    for name, m in masked.items():
        key = f"{name}.weight" if name else "weight"
        if key not in state:
            continue
        fmt, parts = encode(state[key], m.hwprune_mask)
        entries[key] = {
            "format": fmt,
            "shape": list(state[key].shape),
            "dtype": str(state[key].dtype),
            "pattern": getattr(m, "hwprune_sparsity", None),
        }
        for part, t in parts.items():
            tensors[f"{key}::{part}"] = t.contiguous()
        del state[key]
    save_file(tensors, str(directory / SPARSE_FILE))
    return {"file": SPARSE_FILE, "tensors": entries}


def _parts(stored: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    prefix = f"{key}::"
    return {k[len(prefix) :]: v for k, v in stored.items() if k.startswith(prefix)}


def read_sparse(directory: str | Path, entry: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights, masks) stored compressed in `directory`, both keyed by state dict key."""
    path = Path(directory) / entry.get("file", SPARSE_FILE)
    try:
        stored = load_file(str(path))
    except Exception as e:  # safetensors raises several types on a damaged or missing file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HwpruneError(f"cannot read compressed weights {path} (damaged or cut short?): {first}") from e
    weights, masks = {}, {}
    for key, info in entry["tensors"].items():
        parts = _parts(stored, key)
        if "values" not in parts:
            raise HwpruneError(f"{path} lacks the compressed weight '{key}' that spec.json lists")
        try:
            weights[key] = decode(info["format"], parts, info["shape"], _dtype(info["dtype"]))
            masks[key] = mask_of(info["format"], parts, info["shape"])
        except (RuntimeError, IndexError, KeyError) as e:  # parts that disagree with the listed shape
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise HwpruneError(f"{path} is damaged: compressed weight '{key}' does not decode: {first}") from e
    return weights, masks


def restore_masks(model: nn.Module, masks: dict[str, torch.Tensor], entry: dict) -> None:
    """Re-register the saved masks (and each layer's `hwprune_sparsity`) on a loaded model."""

    modules = dict(model.named_modules())
    for key, mask in masks.items():
        name = key.rpartition(".")[0]
        apply_masks(model, {name: mask})
        pattern = entry["tensors"][key].get("pattern")
        if pattern:
            modules[name].hwprune_sparsity = pattern


def directory_bytes(directory: str | Path) -> int:
    """Total size of the files in a saved model directory."""
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file())
