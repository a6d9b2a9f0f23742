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

    def sample_batch(self) -> Batch:
        """Two validation samples and their labels (the label checks read every label, `label_range`)."""
        return self.x_test[:2], self.y_test[:2]

    def label_range(self) -> tuple[int, int] | None:
        y = torch.cat([self.y_train.flatten(), self.y_test.flatten()])
        return (int(y.min()), int(y.max())) if len(y) and not y.is_floating_point() else None


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
        loss_fn, metric: what this data's targets call for when the caller names neither (embedding
            targets: cosine distance and cosine similarity); None: cross-entropy and top-1.
    """

    def __init__(self, train, val=None, description: str | None = None, loss_fn=None, metric=None):
        self.loss_fn, self.metric = loss_fn, metric
        self.train = self._loader(train, shuffle=True)
        self.val = self._loader(val, shuffle=False) if val is not None else None
        first = next(iter(self.train), None)
        if first is None:
            raise HwpruneError(
                f"the training data (a {type(train).__name__}) yielded no batch: pass a DataLoader, list or Dataset "
                "with at least one (inputs, targets) batch"
            )
        if self.val is not None and next(iter(self.val), None) is None:
            raise HwpruneError(f"the validation data (a {type(val).__name__}) yielded no batch: pass at least one")
        split_batch(first)  # a batch that is neither inputs nor (inputs, targets) fails here, in one line
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
        return self.sample_batch()[0]

    def sample_batch(self) -> Batch:
        return split_batch(next(iter(self.val if self.val is not None else self.train)))

    def label_range(self) -> tuple[int, int] | None:
        """The first batch's labels only: a loader is not read whole to check it."""
        y = self.sample_batch()[1]
        ok = isinstance(y, torch.Tensor) and y.numel() and not y.is_floating_point()
        return (int(y.min()), int(y.max())) if ok else None


def check_targets(outputs, targets, label_range: tuple[int, int] | None, default_loss: bool) -> None:
    """The data's targets against the model's outputs, for the default loss (cross-entropy over class indices
    or class probabilities): a label beyond the outputs or targets of another shape would fail deep inside
    fine-tuning or a gradient criterion, or silently train on the wrong thing."""
    if not (default_loss and isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return
    if outputs.dim() < 2:
        return
    fix = "or pass loss_fn=... for targets of another kind"
    classes = outputs.shape[-1]
    if targets.is_floating_point() or targets.dtype == torch.bool:
        if targets.shape != outputs.shape:
            raise HwpruneError(
                f"the data's targets are {str(targets.dtype).removeprefix('torch.')} of shape {tuple(targets.shape)}: "
                f"cross-entropy (the default loss) takes class indices (int64) of shape {tuple(outputs.shape[:-1])} "
                f"or class probabilities of the outputs' shape {tuple(outputs.shape)}; {fix}"
            )
        return
    if tuple(targets.shape) != tuple(outputs.shape[:-1]):
        raise HwpruneError(
            f"the data's labels have shape {tuple(targets.shape)}, the model's outputs {tuple(outputs.shape)}: "
            f"cross-entropy (the default loss) needs one class index per output row, shape "
            f"{tuple(outputs.shape[:-1])} (e.g. labels.squeeze(-1)); {fix}"
        )
    if label_range is not None and (label_range[0] < 0 or label_range[1] >= classes):
        raise HwpruneError(
            f"the data's labels run from {label_range[0]} to {label_range[1]}, the model outputs {classes} classes "
            f"(labels 0..{classes - 1}): check the labels or the model's last layer; {fix}"
        )


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
