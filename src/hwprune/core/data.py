"""Data as the pipeline consumes it: tensors split into train and test, and batches drawn from them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Dataset:
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

    def batches(self, batch_size: int, n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
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

