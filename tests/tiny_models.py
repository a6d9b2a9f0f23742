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


class DigitsResNet(nn.Module):
    """For sklearn digits (1x8x8, 10 classes): stem, two residual blocks (removable), BatchNorm, head."""

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.block1 = self.Block(c)
        self.block2 = self.Block(c)
        self.mid = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(self.mid(x).mean((2, 3)))


class DigitsAttention(nn.Module):
    """For sklearn digits: the 8 image rows are 8 tokens; one attention layer with 4 heads, then a head."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc = nn.Linear(dim, 10)

    def forward(self, x):
        t = self.embed(x.flatten(1, 2))  # (N, 8 rows, 8 pixels) -> (N, 8, dim)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.fc(t.mean(1))


def digits_resnet():
    torch.manual_seed(0)
    return DigitsResNet(), torch.randn(16, 1, 8, 8)


def digits_attention():
    torch.manual_seed(0)
    return DigitsAttention(), torch.randn(16, 1, 8, 8)
