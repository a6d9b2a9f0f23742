"""Each epoch's batches for this process: a function of (seed, epoch) alone, so that a resumed epoch replays
the batches the killed run drew, and the same code deals them over one process or N (`DistributedSampler`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
import torch.utils.data as tud

from hwprune.core.data import Dataset, split_batch
from hwprune.core.errors import HwpruneError
from hwprune.finetune import distributed
from hwprune.finetune.config import TrainConfigError


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_len(x) -> int:
    """Samples in a batch of inputs: the first dimension of its first tensor (a tensor, tuple or dict)."""
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.dim() else 1
    values = x.values() if isinstance(x, dict) else x if isinstance(x, (tuple, list)) else []
    return next((batch_len(v) for v in values if isinstance(v, (torch.Tensor, dict, tuple, list))), 1)


class EpochBatches:
    """Each epoch's batches for this process, a function of (seed, epoch) alone (so a resume replays them).

    Tensors (the built-in data sets): a `DistributedSampler` over the samples, batch_size / N each.
    A DataLoader over a map-style dataset under N processes: rebuilt with a DistributedSampler. Any other
    iterable: its order is drawn with torch's generator seeded per epoch, and batches are dealt round-robin.
    """

    def __init__(self, data, batch_size: int, seed: int, world: distributed.World):
        self.data, self.seed, self.world = data, seed, world
        if batch_size % world.size:
            raise TrainConfigError(
                "batch_size", batch_size, f"the total batch must divide evenly over the {world.size} processes"
            )
        self.per_rank = batch_size // world.size
        self.loader = None
        self.sampler = None
        if isinstance(data, Dataset):
            n = len(data.x_train)
            self.sampler = tud.DistributedSampler(
                range(n), world.size, world.rank, shuffle=True, seed=seed, drop_last=True
            )
            self.n = len(self.sampler) // self.per_rank
        else:
            source = data.train
            if (
                world.distributed
                and isinstance(source, tud.DataLoader)
                and not isinstance(source.dataset, tud.IterableDataset)
            ):
                self.sampler = tud.DistributedSampler(
                    source.dataset, world.size, world.rank, shuffle=True, seed=seed, drop_last=True
                )
                per = max(1, (source.batch_size or 1) // world.size)
                source = tud.DataLoader(
                    source.dataset, per, sampler=self.sampler, collate_fn=source.collate_fn, drop_last=True
                )
                self.n = len(source)
            else:
                self.n = len(source) // world.size
            self.loader = source
        if self.n < 1:
            raise HwpruneError(
                f"the training data gives no full batch of {batch_size} per step"
                + (f" over {world.size} processes" if world.distributed else "")
                + ": lower --finetune-batch-size or pass more data"
            )

    def __len__(self) -> int:
        return self.n

    def epoch(self, epoch: int, skip: int = 0) -> Iterator:
        """Epoch `epoch`'s batches from the `skip`-th on. The skipping happens here, before the first batch
        is asked for: whatever random draws it takes are over when the caller restores a checkpoint's RNGs."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.loader is None:
            return self._tensor_batches(torch.tensor(list(self.sampler)), skip)
        if self.sampler is None:  # the loader shuffles from torch's generator (or its own): seed it per epoch
            torch.manual_seed(self.seed * 100_003 + epoch)
            gen = getattr(self.loader, "generator", None)
            if isinstance(gen, torch.Generator):
                gen.manual_seed(self.seed * 100_003 + epoch)
        it = iter(self.loader)
        if self.sampler is None and self.world.distributed:
            it = itertools.islice(it, self.world.rank, self.n * self.world.size, self.world.size)
        it = itertools.islice(it, self.n)
        for _ in range(skip):
            next(it)
        return (split_batch(b) for b in it)

    def _tensor_batches(self, order: torch.Tensor, skip: int) -> Iterator:
        for i in range(skip, self.n):
            idx = order[i * self.per_rank : (i + 1) * self.per_rank]
            yield self.data.x_train[idx], self.data.y_train[idx]
