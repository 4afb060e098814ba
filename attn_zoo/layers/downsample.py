"""Downsamplers between stages: ``(B, H, W, C_in) -> (B, ceil(H/2), ceil(W/2), C_out)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attn_zoo.errors import UnknownNameError
from attn_zoo.layers.mbconv import MbConvBlock


class PatchMerging(nn.Module):
    """Swin's patch merging: concatenate each 2x2 neighbourhood, LayerNorm(4C), Linear(4C -> C_out, no bias).

    The concatenation order is the official one: (0,0), (1,0), (0,1), (1,1). Odd sides are zero-padded.
    """

    def __init__(self, dim: int, out_dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = x.reshape(B, x.shape[1] // 2, 2, x.shape[2] // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class ConvDownsample(nn.Module):
    """Conv3x3 stride 2 (C_in -> C_out) then a norm: LayerNorm (ScalableViT) or BatchNorm (DilateFormer)."""

    def __init__(self, dim: int, out_dim: int, norm: str = "layernorm", eps: float = 1e-5):
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.is_bn = norm == "batchnorm"
        self.norm = nn.BatchNorm2d(out_dim) if self.is_bn else nn.LayerNorm(out_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.permute(0, 3, 1, 2))
        if self.is_bn:
            return self.norm(x).permute(0, 2, 3, 1)
        return self.norm(x.permute(0, 2, 3, 1))


class ReduceSize(nn.Module):
    """GC-ViT's downsampler: LN -> MbConv residual -> Conv3x3 s2 (no bias) -> LN (``stride=1`` keeps the size).

    Parameter names follow timm's ``gcvit.Downsample2d`` (``norm1``, ``conv_block``, ``reduction``, ``norm2``);
    the official ``ReduceSize`` names the residual block ``conv``.
    """

    def __init__(self, dim: int, out_dim: int, eps: float = 1e-5, stride: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.conv_block = MbConvBlock(dim)
        self.reduction = nn.Conv2d(dim, out_dim, 3, stride, 1, bias=False)
        self.norm2 = nn.LayerNorm(out_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x).permute(0, 3, 1, 2)
        x = self.reduction(self.conv_block(x))
        return self.norm2(x.permute(0, 2, 3, 1))


DOWNSAMPLERS = ("patch_merging", "conv", "conv_bn", "reduce_size")


def build_downsample(kind: str, dim: int, out_dim: int, eps: float = 1e-5) -> nn.Module:
    if kind == "patch_merging":
        return PatchMerging(dim, out_dim, eps)
    if kind == "conv":
        return ConvDownsample(dim, out_dim, "layernorm", eps)
    if kind == "conv_bn":
        return ConvDownsample(dim, out_dim, "batchnorm", eps)
    if kind == "reduce_size":
        return ReduceSize(dim, out_dim, eps)
    raise UnknownNameError("downsampler", kind, DOWNSAMPLERS)
