"""A few-thousand-parameter encoder for method unit tests: every step runs in milliseconds on CPU.
It records the batch size of every forward (``rows_seen``), so tests can count encoder passes."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.rows_seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows_seen.append(x.shape[0])
        return self.net(x)
