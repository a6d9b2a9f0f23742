"""spec.json of a saved model: read and check its shape, and keep a `file:` source inside the directory.

A saved directory may come from anywhere (a colleague, a download), so reading it checks every field
before any of it is used: a damaged or hand-edited spec fails in one line naming the field, never deep
inside `setattr` or `load_state_dict`. Nothing read here is executed; whether the architecture's source
file may be imported is decided by the caller (`zoo.specs.build_source`, only with `trust_code=True`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hwprune.core.errors import HwpruneError

FORMAT = "hwprune-model/1"


def _damaged(path: Path, what: str) -> HwpruneError:
    return HwpruneError(f"{path} is damaged: {what}; save the model again")


def _is_shape(v) -> bool:
    if isinstance(v, list):
        return all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    return isinstance(v, int) and not isinstance(v, bool)


def _check_modules(path: Path, modules) -> None:
    if not isinstance(modules, dict):
        raise _damaged(path, f"'modules' must be an object (module name -> shape attributes), not {_kind(modules)}")
    for name, attrs in modules.items():
        if not isinstance(attrs, dict):
            raise _damaged(path, f"module '{name}' must map attributes to sizes, not {_kind(attrs)}")
        for k, v in attrs.items():
            if not _is_shape(v):
                raise _damaged(path, f"module '{name}' has {k} = {json.dumps(v)}, not an integer")


def _check_sparse(path: Path, sparse) -> None:
    if not isinstance(sparse, dict) or not isinstance(sparse.get("tensors"), dict):
        raise _damaged(path, "'sparse' must be an object with a 'tensors' object")
    name = sparse.get("file", "sparse.safetensors")
    if not isinstance(name, str) or Path(name).name != name:
        raise _damaged(path, f"'sparse' names the file {name!r}, which is not a file in the directory")
    for key, info in sparse["tensors"].items():
        ok = isinstance(info, dict) and isinstance(info.get("format"), str) and isinstance(info.get("dtype"), str)
        if not ok or not isinstance(info.get("shape"), list) or not _is_shape(info["shape"]):
            raise _damaged(path, f"compressed weight '{key}' needs a format, a dtype and a shape of integers")


def _kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(v), type(v).__name__)


def check_spec(spec, path: Path) -> dict:
    """`spec` (parsed spec.json) if every field has the shape `load` relies on; else one-line HwpruneError."""
    if not isinstance(spec, dict):
        raise _damaged(path, f"it holds {_kind(spec)}, not an object")
    if spec.get("format") != FORMAT:
        raise HwpruneError(f"{path}: unknown format {spec.get('format')!r}, expected {FORMAT!r}")
    for key in ("source", "modules"):
        if key not in spec:
            raise _damaged(path, f"the key '{key}' is missing")
    if not isinstance(spec["source"], dict) or not isinstance(spec["source"].get("kind"), str):
        raise _damaged(path, "'source' must be an object with a 'kind'")
    _check_modules(path, spec["modules"])
    replaced = spec.get("replaced", {})
    if not isinstance(replaced, dict) or not all(isinstance(v, str) for v in replaced.values()):
        raise _damaged(path, "'replaced' must map module names to kinds")
    if spec.get("sparse") is not None:
        _check_sparse(path, spec["sparse"])
    shape = spec.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and _is_shape(shape) and min(shape, default=0) > 0):
        raise _damaged(path, f"'input_shape' must be a list of positive integers, not {json.dumps(shape)}")
    return spec


def read_spec(directory: str | Path) -> dict:
    """The checked spec.json of a saved model directory."""
    path = Path(directory) / "spec.json"
    try:
        text = path.read_text()
    except OSError as e:
        raise HwpruneError(f"{directory} is not a saved hwprune model (no readable spec.json: {e.strerror})") from e
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:  # also a spec.json cut short by a full disk or a partial copy
        raise HwpruneError(f"{directory} is not a saved hwprune model ({path} is not JSON: {e})") from e
    return check_spec(spec, path)


def stored_source(source: dict, directory: Path) -> dict:
    """The source as the saved spec records it. A `file` source's .py is copied into `directory` and named
    relative to it, so the directory can be moved to another machine (the absolute path stays, as
    `origin`, for a human reader only)."""
    if source.get("kind") != "file" or "path" not in source:
        return source
    original = Path(source["path"])
    out = {"kind": "file", "function": source.get("function"), "origin": str(original)}
    if original.is_file():
        shutil.copyfile(original, directory / original.name)
        out["file"] = original.name
    return out


def source_file(source: dict, directory: Path) -> Path:
    """The .py a saved `file` source names, inside `directory`. A spec.json is data from anywhere: a name
    that leaves the directory (a path, `..`) is refused rather than followed."""
    name = source.get("file")
    if name is None and "path" in source:  # written before the file was stored in the directory
        return Path(source["path"])
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".py") or name.startswith("."):
        raise HwpruneError(f"{directory}/spec.json names the source file {name!r}, which is not a .py in the directory")
    return directory / name


def runnable_source(source: dict, directory: Path) -> dict:
    """A saved spec's source as `resolve` passes it on (an absolute path for a stored file), so that a
    model pruned again from a saved directory stores its source file once more."""
    if source.get("kind") != "file" or ("file" not in source and "path" not in source):
        return source
    return {"kind": "file", "path": str(source_file(source, Path(directory)).resolve()), "function": source["function"]}
