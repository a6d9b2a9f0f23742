"""Data as the pipeline consumes it, from the built-in tensors or from the user's own loaders.

Every stage asks a data object for the same four things: a few calibration batches (scores, BatchNorm
statistics, loss probes), the training batches of some epochs (fine-tuning), validation batches (the
metric) and whether it has labels. `Dataset` holds tensors (the built-in data sets); `LoaderData` wraps
what a PyTorch user already has: a `DataLoader`, any re-iterable of `(inputs, targets)` batches, a
`torch.utils.data.Dataset`, or a (train, validation) pair of them. `as_data` turns any of these into one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.utils.data as tud

from hwprune.core.errors import HwpruneError

#: A batch as the pipeline passes it on: model inputs (a tensor, a tuple or a dict of tensors) and targets
#: (None for unlabeled data).
Batch = tuple[object, object]

#: Validation batches of the built-in tensors (evaluation only: any size gives the same accuracy).
EVAL_BATCH = 1024


@dataclass
class Dataset:
    """Train and test tensors of a built-in data set (`hwprune.zoo.datasets`)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    description: str

    labeled = True

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def batches(self, batch_size: int, n: int, seed: int = 0) -> list[Batch]:
        """`n` random training batches (calibration)."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.x_train), generator=g)
        return [
            (
                self.x_train[idx[i * batch_size : (i + 1) * batch_size]],
                self.y_train[idx[i * batch_size : (i + 1) * batch_size]],
            )
            for i in range(min(n, len(idx) // batch_size))
        ]

    def calibration(self, n: int, seed: int = 0, batch_size: int = 64) -> list[Batch]:
        return self.batches(batch_size, n, seed)

    def epochs(self, epochs: int, batch_size: int = 128, seed: int = 0) -> list[Batch]:
        """`epochs` passes over the training split, each in a seeded random order."""
        g = torch.Generator().manual_seed(seed)
        batches = []
        for _ in range(epochs):
            perm = torch.randperm(len(self.x_train), generator=g)
            for i in range(len(perm) // batch_size):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                batches.append((self.x_train[idx], self.y_train[idx]))
        return batches

    def validation(self) -> Iterator[Batch]:
        for i in range(0, len(self.x_test), EVAL_BATCH):
            yield self.x_test[i : i + EVAL_BATCH], self.y_test[i : i + EVAL_BATCH]

    def sample_inputs(self) -> torch.Tensor:
        """Two validation inputs: enough to check that the data fits a model."""
        return self.x_test[:2]


def _is_batch(item) -> bool:
    """A batch is a tensor, a dict of tensors, or a tuple/list whose first element is one of those."""
    if isinstance(item, (torch.Tensor, dict)):
        return True
    return isinstance(item, (tuple, list)) and bool(item) and isinstance(item[0], (torch.Tensor, dict))


def split_batch(batch) -> Batch:
    """(inputs, targets) of a batch as a loader yields it; a lone tensor or dict has no targets."""
    if isinstance(batch, (torch.Tensor, dict)):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, (tuple, list)) and len(batch) == 1:
        return batch[0], None
    raise HwpruneError(
        f"a data batch must be inputs or (inputs, targets); got a {type(batch).__name__} of {len(batch)} items"
    )


class _Epochs:
    """`epochs` passes over a re-iterable source, with a length (the one-cycle schedule needs it)."""

    def __init__(self, source: Iterable, epochs: int):
        self.source, self.n_epochs = source, epochs

    def __len__(self) -> int:
        return self.n_epochs * len(self.source)

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(self.n_epochs):
            yield from (split_batch(b) for b in self.source)


class LoaderData:
    """The user's own data: training batches and (optionally) validation batches.

    Args:
        train: a DataLoader, a re-iterable of batches, or a torch Dataset (batched by 64, shuffled with
            the run's seed). A one-pass iterator is read once into memory.
        val: the same kinds, for the metric; default the training batches (the report says so).
        description: how the report names the data.
    """

    def __init__(self, train, val=None, description: str | None = None):
        self.train = self._loader(train, shuffle=True)
        self.val = self._loader(val, shuffle=False) if val is not None else None
        first = next(iter(self.train), None)
        if first is None:
            raise HwpruneError("the training data yielded no batch")
        self.labeled = split_batch(first)[1] is not None
        self.num_classes = None
        self.description = description or (
            f"{type(train).__name__} of the caller"
            + (f", {len(self.train)} batches" if hasattr(self.train, "__len__") else "")
            + ("" if self.val is not None else "; validation = training batches")
        )

    @staticmethod
    def _loader(source, shuffle: bool):
        if isinstance(source, tud.Dataset) and not isinstance(source, tud.IterableDataset):
            return tud.DataLoader(source, batch_size=64, shuffle=shuffle, generator=torch.Generator().manual_seed(0))
        if isinstance(source, Iterator) or not hasattr(source, "__len__"):
            return list(source)  # one pass only, or no length for the one-cycle schedule: read it once
        return source

    def calibration(self, n: int, seed: int = 0, batch_size: int = 64) -> list[Batch]:
        """The first `n` training batches (at the loader's own batch size)."""
        return [split_batch(b) for b in itertools.islice(self.train, n)]

    def epochs(self, epochs: int, batch_size: int = 128, seed: int = 0) -> _Epochs:
        torch.manual_seed(seed)  # a shuffling DataLoader draws its order from torch's global generator
        return _Epochs(self.train, epochs)

    def validation(self) -> Iterator[Batch]:
        yield from (split_batch(b) for b in (self.val if self.val is not None else self.train))

    def sample_inputs(self):
        return split_batch(next(iter(self.val if self.val is not None else self.train)))[0]


def as_data(data) -> Dataset | LoaderData | None:
    """Whatever the caller passed as `data`, as an object the pipeline reads (None stays None).

    Accepts a built-in `Dataset`, a `LoaderData`, a DataLoader or re-iterable of batches, a torch
    Dataset of samples, or a (train, validation) pair of those.
    """
    if data is None or isinstance(data, (Dataset, LoaderData)):
        return data
    if isinstance(data, (str, bytes)):
        raise HwpruneError(
            f"data={data!r}: the Python API takes data objects (a DataLoader, batches, a torch Dataset); "
            "named data sets are in hwprune.zoo.datasets.get_dataset"
        )
    if isinstance(data, tuple) and len(data) == 2 and not any(_is_batch(d) for d in data):
        return LoaderData(data[0], data[1])
    if isinstance(data, (tud.Dataset, Iterable)):
        return LoaderData(data)
    raise HwpruneError(
        f"data of type {type(data).__name__}: pass a DataLoader, an iterable of (inputs, targets) batches, "
        "a torch Dataset, or a (train, validation) pair of them"
    )
