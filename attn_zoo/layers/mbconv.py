"""The small convolutional block GC-ViT builds its downsampler, stem and global query generator from.

Structure and parameter names follow timm's ``gcvit.MbConvBlock`` (``conv_dw``, ``se.fc1``, ``se.fc2``,
``conv_pw``), which is the official ``nn.Sequential(DWConv3x3, GELU, SE, Conv1x1)`` with names, so timm's
weights load by name. The squeeze-excite width is the official ``int(C * 0.25)``; timm rounds it up to a
multiple of 8, which is the same number for every GC-ViT width (multiples of 32) but not for harness
widths such as 36.
"""

from __future__ import annotations

import torch
from timm.layers import SEModule
from torch import nn


def squeeze_excite(dim: int, expansion: float = 0.25) -> nn.Module:
    """GC-ViT's SE: mean over H, W -> 1x1 Conv(C, int(C/4), no bias) -> GELU -> 1x1 Conv -> sigmoid gate.

    ``(B, C, H, W) -> (B, C, H, W)``. The official code uses Linear layers on the pooled vector, the same
    map; timm's 1x1 convolutions are used here so timm checkpoints load without reshaping.
    """
    return SEModule(dim, rd_channels=int(dim * expansion), bias=False, act_layer=nn.GELU)


class MbConvBlock(nn.Module):
    """Residual ``x + Conv1x1(SE(GELU(DWConv3x3(x))))``, no biases, no norm (GC-ViT's fused-MBConv-like block).

    ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False)
        self.act = nn.GELU()
        self.se = squeeze_excite(dim)
        self.conv_pw = nn.Conv2d(dim, dim, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_pw(self.se(self.act(self.conv_dw(x))))

    @staticmethod
    def macs(dim: int, height: int, width: int) -> int:
        """Multiply-accumulates for one image at ``height x width`` (DW 3x3, the SE's two 1x1s, PW 1x1)."""
        hidden = int(dim * 0.25)
        return height * width * (9 * dim + dim * dim) + 2 * dim * hidden
