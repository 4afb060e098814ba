"""Window helpers shared by the windowed mechanisms (Swin, IWSA, GC-ViT): padding, partition, reverse,
and the relative position bias table of Swin (also used by GC-ViT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn


def pad_to_multiple(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Zero-pad ``(B, H, W, C)`` at the bottom and right so H, W are multiples of ``window``.

    Bottom/right zero padding after the block's norm is what the official Swin detection code does.
    """
    H, W = x.shape[1:3]
    pad_h = (window[0] - H % window[0]) % window[0]
    pad_w = (window[1] - W % window[1]) % window[1]
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W, C) -> (B, nW, Mh*Mw, C)`` with windows in row-major order; H, W multiples of the window."""
    B, H, W, C = x.shape
    Mh, Mw = window
    x = x.view(B, H // Mh, Mh, W // Mw, Mw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // Mh) * (W // Mw), Mh * Mw, C)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B, nW, Mh*Mw, C) -> (B, H, W, C)``."""
    B, _, _, C = windows.shape
    Mh, Mw = window
    x = windows.view(B, height // Mh, width // Mw, Mh, Mw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, height, width, C)


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """``(Mh*Mw, Mh*Mw)`` index into a ``(2Mh-1)(2Mw-1)`` table of relative offsets (Swin's layout)."""
    Mh, Mw = window
    coords = torch.stack(torch.meshgrid(torch.arange(Mh), torch.arange(Mw), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + Mh - 1) * (2 * Mw - 1) + (rel[..., 1] + Mw - 1)


class RelativePositionBias(nn.Module):
    """A learned bias per head and relative offset inside a window: ``() -> (heads, N, N)``, N = Mh*Mw.

    Parameter name ``relative_position_bias_table`` as in the official Swin and GC-ViT code, so their
    weights map in by name.
    """

    def __init__(self, window: tuple[int, int], num_heads: int):
        super().__init__()
        self.window = tuple(window)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1), num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(self.window), persistent=False)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self) -> torch.Tensor:
        n = self.window[0] * self.window[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1)
