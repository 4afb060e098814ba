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
        # contiguous: added to every window's logits, a bias strided by the heads would not vectorise
        # (measured 0.97 -> 0.36 ms for the add at Swin-T stage 3, batch 8, 2 threads)
        return bias.permute(2, 0, 1).contiguous()


def merge_heads_reverse(out: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """``(B, nW, heads, Mh*Mw, d) -> (B, H, W, heads*d)``: heads merged and windows reversed in one copy.

    Equals ``window_reverse(out.transpose(2, 3).reshape(B, nW, N, heads * d), window, H, W)`` (two copies).
    """
    B, _, heads, _, d = out.shape
    Mh, Mw = window
    x = out.reshape(B, height // Mh, width // Mw, heads, Mh, Mw, d).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, height, width, heads * d)


class _GatherRows(torch.autograd.Function):
    """``src[:, index]`` along dim 1 for an injective ``index``. The backward gathers with ``inverse`` when the
    index is a permutation (one copy); otherwise it scatters into zeros (the rows never read get 0)."""

    @staticmethod
    def forward(ctx, src: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(index, inverse)
        ctx.rows = src.shape[1]
        return src.index_select(1, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        index, inverse = ctx.saved_tensors
        if inverse is not None:
            return grad.index_select(1, inverse), None, None
        out = grad.new_zeros(grad.shape[0], ctx.rows, *grad.shape[2:])
        return out.index_copy_(1, index, grad), None, None


def gather_rows(src: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, R, ...) -> (B, len(index), ...)``: rows ``index`` of ``src`` (each row at most once), one copy.

    ``inverse`` (with ``index[inverse] == arange(R)``) may be given when ``index`` is a permutation of all
    ``R`` rows; the backward is then one gather instead of a scatter into zeros.
    """
    return _GatherRows.apply(src, index, inverse)


def window_token_order(
    height: int, width: int, window: tuple[int, int], shift: int, heads: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Token permutations that replace pad + roll + :func:`window_partition` and its inverse by one gather each.

    For a map padded at the bottom/right to ``(Hp, Wp)`` (multiples of the window) and rolled by
    ``(-shift, -shift)``, returns ``(into, into_inverse, back, back_inverse)``:

    * ``into``, ``(Hp*Wp,)``: window-order token ``t = w*N + n`` (window ``w``, slot ``n``) is padded-map
      token ``into[t]``, so ``gather_rows(x_padded.view(B, Hp*Wp, C), into)`` equals
      ``window_partition(roll(x_padded, -shift)).view(B, nW*N, C)``.
    * ``back``, ``(H*W*heads,)``: for an attention output ``(B, nW, heads, N, d)`` viewed as rows of ``d``,
      ``gather_rows(out.view(B, nW*heads*N, d), back).view(B, H, W, heads*d)`` is the heads merged, the
      windows reversed, the roll undone and the padding cropped, in one copy (instead of four).
    * the inverses for the backward; ``back_inverse`` is ``None`` when padding is cropped (not a permutation).

    On CPU one ``index_select`` costs about as much as a roll along two axes and twice a strided copy, so
    this pays for shifted windows (roll + partition, and merge + reverse + roll) but not for unshifted ones.
    """
    Mh, Mw = window
    Hp, Wp = -(-height // Mh) * Mh, -(-width // Mw) * Mw
    position = torch.arange(Hp * Wp, device=device).view(1, Hp, Wp, 1)
    if shift:
        position = torch.roll(position, shifts=(-shift, -shift), dims=(1, 2))
    into = window_partition(position, window).reshape(-1)
    into_inverse = torch.empty_like(into)
    into_inverse[into] = torch.arange(into.numel(), device=device)  # padded-map token -> window-order token
    order = into_inverse.view(Hp, Wp)[:height, :width].reshape(-1)
    n = Mh * Mw
    w, slot = order // n, order % n
    back = ((w[:, None] * heads + torch.arange(heads, device=device)) * n + slot[:, None]).reshape(-1)
    back_inverse = None
    if (Hp, Wp) == (height, width):
        back_inverse = torch.empty_like(back)
        back_inverse[back] = torch.arange(back.numel(), device=device)
    return into, into_inverse, back, back_inverse
