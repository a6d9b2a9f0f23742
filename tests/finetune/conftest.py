"""A tiny labelled task the fine-tuning tests share: 16-sample 1-D signals whose class is the sign of their mean."""

import pytest
import torch
import torch.nn as nn

from hwprune.core.data import Dataset


def toy_data(n: int = 512, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, generator=g)
    y = (x.mean((1, 2)) > 0).long()
    return Dataset("toy", x[: n * 3 // 4], y[: n * 3 // 4], x[n * 3 // 4 :], y[n * 3 // 4 :], 2, "toy sign task")


def toy_net(width: int = 8, bn: bool = True, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    norm = nn.BatchNorm1d(width) if bn else nn.Identity()
    return nn.Sequential(
        nn.Conv1d(1, width, 3, padding=1), norm, nn.ReLU(), nn.Dropout(0.1), nn.Flatten(), nn.Linear(16 * width, 2)
    )


def accuracy(data: Dataset):
    def score(model: nn.Module) -> float:
        with torch.no_grad():
            return (model(data.x_test).argmax(1) == data.y_test).float().mean().item()

    return score


@pytest.fixture
def data():
    return toy_data()
