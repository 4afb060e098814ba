"""The small convolutional blocks GC-ViT builds its downsampler and global query generator from."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation as in GC-ViT: avgpool -> Linear(C, C/4, no bias) -> GELU -> Linear -> sigmoid.

    ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, dim: int, expansion: float = 0.25):
        super().__init__()
        hidden = int(dim * expansion)
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class MbConvBlock(nn.Module):
    """Residual ``x + Conv1x1(SE(GELU(DWConv3x3(x))))``, no biases (GC-ViT's fused-MBConv-like block).

    ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False),
            nn.GELU(),
            SqueezeExcite(dim),
            nn.Conv2d(dim, dim, 1, 1, 0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)
