"""Convolutional position encodings on channels-last tokens."""

from __future__ import annotations

import torch
from torch import nn


class PosConv(nn.Module):
    """``x + DWConv3x3(x)`` on ``(B, H, W, C)`` tokens.

    The conditional position encoding of CPVT (Chu et al. 2021): ScalableViT's PEG after the first block of
    each stage, DilateFormer's CPE before every block.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
