"""Stems: image ``(B, C_in, H, W)`` -> tokens ``(B, H/p, W/p, C)`` for patch size p (a power of two)."""

from __future__ import annotations

import torch
from torch import nn

from attn_zoo.errors import ConfigError, UnknownNameError
from attn_zoo.layers.downsample import ReduceSize


class PatchStem(nn.Module):
    """Non-overlapping patches: Conv(p x p, stride p) then LayerNorm (Swin, ViT)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvStem(nn.Module):
    """Overlapping conv: kernel 2p-1, stride p, padding p-1, then LayerNorm (ScalableViT: k7 s4 p3 at p=4)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, eps: float = 1e-5):
        super().__init__()
        p = patch_size
        self.proj = nn.Conv2d(in_chans, dim, 2 * p - 1, p, p - 1)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvBNStem(nn.Module):
    """DilateFormer's overlapping stem: four 3x3 convs C_in -> h -> 2h -> 4h -> C (no bias), BN + GELU after
    the first three, strides (1, 2, 1, 2) at p = 4 (the stride-2 convs become stride 1 for smaller p)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, hidden: int = 16):
        super().__init__()
        strides = {1: (1, 1, 1, 1), 2: (1, 1, 1, 2), 4: (1, 2, 1, 2)}[patch_size]
        chans = (in_chans, hidden, 2 * hidden, 4 * hidden, dim)
        layers: list[nn.Module] = []
        for i, s in enumerate(strides):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 3, s, 1, bias=False))
            if i < 3:
                layers += [nn.BatchNorm2d(chans[i + 1]), nn.GELU()]
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class GCViTStem(nn.Module):
    """GC-ViT's stem: Conv3x3 (stride 2 at p = 4, with bias), then ReduceSize keeping the width (stride 2).

    Parameter names follow timm's ``gcvit.Stem`` (``conv1``, ``down``); the official ``PatchEmbed`` calls
    them ``proj`` and ``conv_down``.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int, eps: float = 1e-5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim, 3, 2 if patch_size == 4 else 1, 1)
        self.down = ReduceSize(dim, dim, eps, stride=2 if patch_size >= 2 else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.conv1(x).permute(0, 2, 3, 1))


STEMS = ("patch", "conv", "conv_bn", "gcvit")


def build_stem(kind: str, in_chans: int, dim: int, patch_size: int, eps: float = 1e-5) -> nn.Module:
    if kind == "patch":
        return PatchStem(in_chans, dim, patch_size, eps)
    if patch_size not in (1, 2, 4):
        raise ConfigError(f"stem {kind!r} supports patch_size 1, 2 or 4, got {patch_size}")
    if kind == "conv":
        return ConvStem(in_chans, dim, patch_size, eps)
    if kind == "conv_bn":
        return ConvBNStem(in_chans, dim, patch_size)
    if kind == "gcvit":
        return GCViTStem(in_chans, dim, patch_size, eps)
    raise UnknownNameError("stem", kind, STEMS)


def stem_out_size(kind: str, size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Token grid the stem makes from an image of ``size``."""
    if kind == "patch":
        return size[0] // patch_size, size[1] // patch_size
    # stride-2, padding-1 convs (and the k=2p-1 conv) give ceil(n / 2) per halving
    h, w = size
    for _ in range(patch_size.bit_length() - 1):
        h, w = -(-h // 2), -(-w // 2)
    return h, w
