"""Swin: window attention with shifted windows (W-MSA / SW-MSA), Liu et al., ICCV 2021.

Follows microsoft/Swin-Transformer (models/swin_transformer.py); the padding for maps that are not
multiples of the window follows the official detection code (pad bottom/right with zeros after the
norm, then roll, then build the shift mask on the padded map). timm rolls before padding instead; the
two agree whenever the map is a multiple of the window (e.g. Swin-T at 224). The output projection runs
after the crop (it is per token, so outputs are the same); on a padded map this counts fewer MACs than the
official code, which projects the padded tokens too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attn_zoo.errors import KnobError
from attn_zoo.layers.attention import WINDOW_BACKENDS
from attn_zoo.layers.window import (
    RelativePositionBias,
    gather_rows,
    merge_heads_reverse,
    pad_to_multiple,
    window_partition,
    window_token_order,
)
from attn_zoo.mechanisms.base import Mixer
from attn_zoo.registry import register_mechanism


@register_mechanism("swin")
class SwinAttention(Mixer):
    """Swin window attention: W-MSA, or SW-MSA with cyclic shift and mask, plus relative position bias.

    Logits q k^T / sqrt(d) + B, with B read from a learned ((2M-1)^2, heads) table by relative offset.
    Blocks alternate W-MSA and SW-MSA (``shift`` False / True); a shifted block rolls the map by -M/2 before
    partitioning and +M/2 after, and masks pairs of tokens that come from different image regions.

    Args:
        window: window side M.
        shift: SW-MSA (shifted) instead of W-MSA; the default schedule alternates W-MSA and SW-MSA.
        qkv_bias: learnable bias in the qkv projection.
        mask_value: logit added to masked pairs. The official code uses -100.0, not -inf (reproduced).
        mask_padding: also mask zero-padded key tokens (clean variant); the official code leaves them in.
        clamp_window: if the stage map is no larger than the window, use window = map side and no shift,
            as the official code does at construction (needs the stage size, which the harness passes).
    """

    paper = "Swin Transformer (Liu et al., ICCV 2021), microsoft/Swin-Transformer"
    block_pattern = ({"shift": False}, {"shift": True})
    backends = WINDOW_BACKENDS

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        feat_size: tuple[int, int] | None = None,
        window: int = 7,
        shift: bool = False,
        qkv_bias: bool = True,
        mask_value: float = -100.0,
        mask_padding: bool = False,
        clamp_window: bool = True,
    ):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.validate_knobs({"window": window})
        if clamp_window and feat_size is not None and min(feat_size) <= window:
            window, shift = min(feat_size), False
        self.window = (window, window)
        self.shift_size = window // 2 if shift else 0
        self.mask_value = mask_value
        self.mask_padding = mask_padding
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rel_pos = RelativePositionBias(self.window, num_heads)
        self.proj = nn.Linear(dim, dim)
        self._masks: dict[tuple, torch.Tensor | None] = {}
        self._orders: dict[tuple, tuple[torch.Tensor, ...]] = {}

    @classmethod
    def validate_knobs(cls, knobs: dict[str, Any]) -> None:
        if knobs.get("window", 1) < 1:
            raise KnobError(f"mechanism 'swin': window must be >= 1, got {knobs['window']}")

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; any H, W (padded to the window internally, then cropped).

        Math of the official code: zero-pad bottom/right to multiples of M, roll by -M/2 (SW-MSA), partition
        into windows, attention per window with bias + mask, merge heads, reverse, roll back, crop, proj
        (proj is per token, so it may follow the crop). For SW-MSA the token moves are one precomputed gather
        each way (:func:`window_token_order`); W-MSA partitions and reverses with strided copies, which are
        cheaper there. Same tensors either way, fewer copies than the official code.
        """
        B, H, W, C = self.check_input(x)
        x = pad_to_multiple(x, self.window)
        Hp, Wp = x.shape[1:3]
        h, d, N = self.num_heads, self.head_dim, self.window[0] * self.window[1]
        nW = (Hp * Wp) // N
        if self.shift_size:
            into, into_inverse, back, back_inverse = self._order(H, W, x.device)
            windows = gather_rows(x.reshape(B, Hp * Wp, C), into, into_inverse)  # rolled and partitioned
        else:
            windows = window_partition(x, self.window)
        qkv = self.qkv(windows).view(B, nW, N, 3, h, d).permute(3, 0, 1, 4, 2, 5)  # (3, B, nW, heads, N, d)
        bias = self.rel_pos().unsqueeze(0)  # (1, heads, N, N)
        mask = self._mask(H, W, Hp, Wp, x.device)
        if mask is not None:
            bias = bias + mask.to(bias.dtype).unsqueeze(1)  # (nW, heads, N, N): one additive term
        out = self.attend(*qkv.unbind(0), scale=self.scale, bias=bias)
        if self.shift_size:
            out = gather_rows(out.reshape(B, nW * h * N, d), back, back_inverse).view(B, H, W, C)
        else:
            out = merge_heads_reverse(out, self.window, Hp, Wp)[:, :H, :W]
        return self.proj(out)

    def _order(self, H: int, W: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = (H, W, device)
        if key not in self._orders:
            self._orders[key] = window_token_order(H, W, self.window, self.shift_size, self.num_heads, device)
        return self._orders[key]

    def _mask(self, H: int, W: int, Hp: int, Wp: int, device: torch.device) -> torch.Tensor | None:
        """``(nW, N, N)`` additive mask (0 or ``mask_value``) for the shift and optionally the padding."""
        padded = self.mask_padding and (Hp != H or Wp != W)
        if not self.shift_size and not padded:
            return None
        key = (H, W, Hp, Wp, device)
        if key not in self._masks:
            Mh, Mw = self.window
            s = self.shift_size
            # label every position by the image region it came from; pairs with different labels are masked
            region = torch.zeros(1, Hp, Wp, 1, device=device)
            if s:
                cuts_h = (slice(0, -Mh), slice(-Mh, -s), slice(-s, None))
                cuts_w = (slice(0, -Mw), slice(-Mw, -s), slice(-s, None))
                for i, (hs, ws) in enumerate((hs, ws) for hs in cuts_h for ws in cuts_w):
                    region[:, hs, ws, :] = i
            labels = window_partition(region, self.window).squeeze(-1).squeeze(0)  # (nW, N)
            mask = (labels.unsqueeze(1) != labels.unsqueeze(2)).float() * self.mask_value
            if padded:
                valid = torch.zeros(1, Hp, Wp, 1, device=device)
                valid[:, :H, :W] = 1
                if s:
                    valid = torch.roll(valid, shifts=(-s, -s), dims=(1, 2))
                pad_keys = window_partition(valid, self.window).squeeze(-1).squeeze(0) == 0  # (nW, N)
                mask = torch.where(pad_keys.unsqueeze(1), torch.full_like(mask, self.mask_value), mask)
            self._masks[key] = mask
        return self._masks[key]

    def attention_macs(self, height: int, width: int) -> int:
        """qkv and attention over the padded map; proj over the real tokens (it follows the crop)."""
        Mh, Mw = self.window
        padded = -(-height // Mh) * Mh * (-(-width // Mw) * Mw)
        c = self.dim
        return 3 * padded * c * c + height * width * c * c + 2 * padded * Mh * Mw * c

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, shift={self.shift_size}"
