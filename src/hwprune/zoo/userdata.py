"""The user's data, loss and metric named by strings (`--data`, `--loss`, `--metric`), resolved into objects.

`--data NAME` is a built-in set (`zoo.datasets`); `--data imagefolder:DIR` a torchvision `ImageFolder`
(one sub-folder per class) resized and normalised as ImageNet models expect, with a held-out tenth;
`--data path/file.py:fn` calls `fn()` for a torch Dataset, a DataLoader, batches or a (train, validation)
pair. `--loss` / `--metric path/file.py:fn` name `fn(outputs, targets)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from hwprune.core.errors import HwpruneError
from hwprune.zoo import text
from hwprune.zoo.datasets import DATASETS, get_dataset
from hwprune.zoo.specs import file_function

#: torchvision's ImageNet normalisation: what pretrained and timm/torchvision-trained models expect.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: Share of an image folder held out for the metric (at least one image).
VAL_FRACTION = 0.1
DATA_HELP = (
    "a built-in set (mnist1d, digits), imagefolder:DIR, path/to/file.py:function, text:PATH (a .txt file or a "
    "folder of them, for text models), or python-docs (the English corpus that ships with Python)"
)


def image_folder(root: str | Path, size: int = 224, seed: int = 0):
    """(train, validation) torch Datasets from an ImageFolder tree, resized to `size` and normalised."""
    import torchvision.transforms as T  # noqa: PLC0415  (torchvision is slow to import; only this needs it)
    from torchvision.datasets import ImageFolder  # noqa: PLC0415

    root = Path(root)
    if not root.is_dir():
        raise HwpruneError(f"--data imagefolder:{root}: not a directory (one sub-folder of images per class)")
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        ds = ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise HwpruneError(f"--data imagefolder:{root}: {str(e).splitlines()[0]}") from None
    n_val = max(1, int(VAL_FRACTION * len(ds)))
    if len(ds) < 2:
        raise HwpruneError(f"--data imagefolder:{root}: needs at least 2 images, found {len(ds)}")
    train, val = torch.utils.data.random_split(
        ds, [len(ds) - n_val, n_val], generator=torch.Generator().manual_seed(seed)
    )
    return train, val


def _text(spec: str, example, tokenizer, model):
    if not isinstance(example, dict) or "input_ids" not in example:
        raise HwpruneError(f"--data {spec}: text data needs a text model (one that takes input_ids)")
    batch, seq_len = example["input_ids"].shape
    sentences = text.python_docs_split() if spec == "python-docs" else text.read_text(spec.split(":", 1)[1])
    return text.text_data(model, tokenizer, sentences, int(batch), int(seq_len), spec)


def resolve_data(spec: str | None, example=None, tokenizer=None, model=None):
    """The data object a `--data SPEC` names (None stays None). The model's example inputs size image folders
    (their sample shape) and text batches (batch size and sequence length, with the model's tokenizer)."""
    if spec is None:
        return None
    if spec in DATASETS:
        return get_dataset(spec)
    if spec == "python-docs" or spec.startswith("text:"):
        return _text(spec, example, tokenizer, model)
    if spec.startswith("imagefolder:"):
        shape = tuple(example.shape[1:]) if isinstance(example, torch.Tensor) else None
        size = shape[-1] if shape and len(shape) == 3 else 224
        return image_folder(spec.split(":", 1)[1], size)
    if ".py:" in spec:
        fn = file_function(spec, "--data")
        try:
            return fn()
        except Exception as e:
            raise HwpruneError(f"--data {spec}: {fn.__name__}() raised {type(e).__name__}: {e}") from e
    raise HwpruneError(f"unknown data set {spec!r} for --data; use {DATA_HELP}")


def resolve_callable(spec: str | None, what: str) -> Callable | None:
    """`fn(outputs, targets)` named by `--loss` / `--metric path/file.py:fn` (None stays None)."""
    return file_function(spec, what) if spec else None
