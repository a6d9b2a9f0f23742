"""Built-in example models (`--model example:NAME`), trained on first use and cached."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.export.model import load, save_model
from hwprune.finetune.train import train
from hwprune.hardware.table import default_cache_dir
from hwprune.zoo import text, tinylm
from hwprune.zoo.datasets import get_dataset


class Mnist1dCNN(nn.Module):
    """A wide 1-D CNN for MNIST-1D.

    Width 256 keeps the model compute bound at the demo's batch of 64 on a 2-core CPU (each 3x1 conv is
    ~0.5-1 GFLOP there), so removing channels really removes time; narrow models are dominated by
    per-op overhead and barely speed up when pruned.
    """

    def __init__(self, width: int = 256, hidden: int = 256, num_classes: int = 10):
        super().__init__()

        def block(cin, cout, k, s):
            return nn.Sequential(nn.Conv1d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(1, width, 5, 1), block(width, width, 3, 2), block(width, width, 3, 1), block(width, width, 3, 2)
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(width * 10, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


@dataclass(frozen=True)
class Example:
    name: str
    build: Callable[[], nn.Module]
    data: str
    epochs: int
    description: str
    #: Built with its pretrained weights (no training); a text model whose inputs come from its tokenizer.
    pretrained_text: bool = False
    #: Trains the built model in its own way (a language model on text) instead of `train` on `data`.
    trainer: Callable[[nn.Module, bool], nn.Module] | None = None
    #: A causal language model whose example inputs are a text prompt (`prompt`: batch size, length -> inputs).
    prompt: Callable[[int, int | None], dict] | None = None
    #: Builds the tokenizer text data sets use with it (`--data python-docs`).
    tokenizer: Callable[[], object] | None = None
    #: Part of the cache key: a new version retrains.
    version: str = "v1"


EXAMPLES: dict[str, Example] = {
    "mnist1d": Example("mnist1d", Mnist1dCNN, "mnist1d", 12, "1-D CNN (4 convs of 256, 2 linears) on MNIST-1D"),
    "minilm": Example(
        "minilm",
        text.minilm,
        "python-docs",
        0,
        "all-MiniLM-L6-v2 sentence encoder (real pretrained weights, 6-layer BERT) on Python's documentation",
        pretrained_text=True,
    ),
    "tinylm": Example(
        "tinylm",
        tinylm.build,
        "python-docs",
        0,
        "byte-level Llama (4 layers of 128, GQA 4 query / 2 KV heads, 0.85 M params) trained here on Python's docs",
        trainer=tinylm.train,
        prompt=tinylm.prompt_inputs,
        tokenizer=tinylm.ByteTokenizer,
        version=tinylm.VERSION,
    ),
}


def get_example(name: str) -> Example:
    if name not in EXAMPLES:
        raise HwpruneError(f"unknown example {name!r}; choose one of: {', '.join(sorted(EXAMPLES))}")
    return EXAMPLES[name]


def trained_example(name: str, progress: bool = True) -> nn.Module:
    """The example's dense model, trained once and cached under the hwprune cache directory."""
    ex = get_example(name)
    tag = hashlib.sha1(json.dumps([name, ex.epochs, ex.data, ex.version]).encode()).hexdigest()[:8]
    path = default_cache_dir() / "examples" / f"{name}-{tag}"
    if (path / "spec.json").exists():
        try:
            return load(path, builder=lambda source: ex.build())
        except HwpruneError:
            pass  # a damaged cache entry is rebuilt below
    if ex.trainer is not None:
        model = ex.trainer(ex.build(), progress)
    else:
        model = train(ex.build(), get_dataset(ex.data), ex.epochs, desc=f"training dense {name}", progress=progress)
    save_model(model, path, {"kind": "example", "name": name}, overwrite=True)  # a damaged entry is replaced
    return model
