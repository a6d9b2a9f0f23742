"""Tiny models for tests (loaded by file path, like a user's `file.py:function` spec)."""

import torch
import torch.nn as nn


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(24)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


class TinyResNet(nn.Module):
    """stem -> residual block (two convs added to the stem output) -> head: the add couples three layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.b(torch.relu(self.a(x)))
        return self.fc(x.mean((2, 3)))


class TinyResNet3(nn.Module):
    """Three residual blocks on one 16-channel trunk: the trunk group touches three others (not a chain)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1)) for _ in range(3)
        )
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for b in self.blocks:
            x = x + b(x)
        return self.fc(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self, d_in=40, width=1024, classes=10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(d_in, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, classes),
        )

    def forward(self, x):
        return self.net(x)


def tiny_cnn():
    torch.manual_seed(0)
    return TinyCNN(), torch.randn(2, 3, 8, 8)


def tiny_resnet():
    torch.manual_seed(0)
    return TinyResNet(), torch.randn(2, 3, 8, 8)


def tiny_resnet3():
    torch.manual_seed(0)
    return TinyResNet3(), torch.randn(2, 3, 8, 8)


def mlp():
    torch.manual_seed(0)
    return MLP(), torch.randn(64, 1, 40)


def not_a_model():
    return 42
