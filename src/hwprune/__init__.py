"""hwprune: prune PyTorch models to a budget measured on the target hardware.

Heavy modules (torch, torch-pruning) are imported only when a function that needs them is called,
so `import hwprune` stays cheap and never touches CUDA.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hwprune")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"


def load(directory):
    """Rebuild a model saved by hwprune (a `model/` directory: spec.json + model.safetensors)."""
    from hwprune.export.model import load as _load

    return _load(directory)


def save(model, directory, source: dict, extra: dict | None = None):
    """Save a model as a JSON shape spec + safetensors weights; `source` names its architecture."""
    from hwprune.export.model import save_model

    return save_model(model, directory, source, extra)


__all__ = ["__version__", "load", "save"]
