"""ScalableViT's IWSA, interactive window self-attention (Yang et al., ECCV 2022).

Follows Yangr116/ScalableViT (image_classification/models/scalablevit.py, class ``IWSA``): attention inside
non-overlapping M x M windows, plus the local interactive module (LIM) that merges the windows' values back
into one map and mixes neighbouring windows with a depthwise 3x3 conv, added before the output projection.

The official code has no padding (it needs H, W to be multiples of M). Here any H, W work:
- a side no longer than M is one window along that side (the window clamps to the side, as Swin's
  official code clamps a window to a smaller stage map);
- otherwise q, k, v are zero-padded at the bottom/right to a multiple of M and the output is cropped.
  By default padded keys are masked, so a clipped window at the border is attention over its real tokens
  only; ``mask_padding=False`` instead pads the tokens before the qkv projection and lets the padded
  keys take part unmasked (what Swin's official detection code does for its windows).
- the LIM conv always sees the real H x W value map, never the padded one: its zero border is then the
  official conv's ``padding=1`` border on every side, and padded tokens cannot leak into the last real
  row/column (their values would be the qkv bias, not zero, with ``mask_padding=False``).
Whenever H and W are multiples of M the output equals the official code's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attn_zoo.errors import KnobError
from attn_zoo.layers.attention import WINDOW_BACKENDS
from attn_zoo.layers.window import Windows
from attn_zoo.mechanisms.base import Mixer
from attn_zoo.registry import register_mechanism


@register_mechanism("iwsa")
class InteractiveWindowAttention(Mixer):
    """Interactive window self-attention: ``proj(WindowAttn(q, k, v) + DWConv3x3(V))``.

    qkv = Linear(C, 3C); softmax(q k^T / sqrt(C/h)) v inside each M x M window, no position bias, no shift;
    the LIM is a depthwise 3x3 conv (with bias, zero border) on the value map V of shape (B, C, H, W),
    added to the attention output before the output projection Linear(C, C).

    Args:
        window: window side M.
        lim: add the local interactive module (the depthwise 3x3 conv on V); False gives plain window
            attention without position bias.
        qkv_bias: learnable bias in the qkv projection.
        mask_padding: when H or W is not a multiple of M, mask the zero-padded keys (a clipped border window
            attends over its real tokens only). False pads the tokens before the qkv projection and leaves
            the padded keys in the softmax, as Swin's official detection code does.
    """

    paper = "ScalableViT (Yang et al., ECCV 2022), Yangr116/ScalableViT"
    backends = WINDOW_BACKENDS

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        feat_size: tuple[int, int] | None = None,
        window: int = 7,
        lim: bool = True,
        qkv_bias: bool = True,
        mask_padding: bool = True,
    ):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.validate_knobs({"window": window})
        self.window = window
        self.mask_padding = mask_padding
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.lim = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim) if lim else None
        self.proj = nn.Linear(dim, dim)
        # no shift; the window clamps per map (``window_for``); padded keys get -inf when masked
        self.windows = Windows(window, num_heads, pad_mask_value=float("-inf") if mask_padding else None)

    @classmethod
    def validate_knobs(cls, knobs: dict[str, Any]) -> None:
        if knobs.get("window", 1) < 1:
            raise KnobError(f"mechanism 'iwsa': window must be >= 1, got {knobs['window']}")

    def window_for(self, height: int, width: int) -> tuple[int, int]:
        """The window used on a ``height x width`` map: M per side, clamped to a shorter side."""
        return min(self.window, height), min(self.window, width)

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; any H, W (padded to the window internally, then cropped)."""
        _, H, W, C = self.check_input(x)
        plan = self.windows.plan(H, W, x.device, window=self.window_for(H, W))
        if self.mask_padding:
            qkv = self.qkv(x)  # padded with zero q, k, v by the partition; the padded keys get masked
        else:
            qkv = self.qkv(plan.pad(x))  # zero tokens, projected like real ones, not masked
        q, k, v = plan.split_heads(plan.partition(qkv), 3)  # each (B, nW, heads, N, d)
        bias = plan.mask.to(q.dtype) if plan.mask is not None else None  # (nW, 1, 1, N) or None
        out = plan.merge(self.attend(q, k, v, scale=self.scale, bias=bias))  # (B, H, W, C)
        if self.lim is not None:
            value_map = qkv[:, :H, :W, 2 * C :].permute(0, 3, 1, 2)  # the real (B, C, H, W) map, never padded
            out = out + self.lim(value_map).permute(0, 2, 3, 1)
        return self.proj(out)

    def attention_macs(self, height: int, width: int) -> int:
        Mh, Mw = self.window_for(height, width)
        hp, wp = -(-height // Mh) * Mh, -(-width // Mw) * Mw
        n, c = height * width, self.dim
        qkv_tokens = n if self.mask_padding else hp * wp
        lim = 9 * n * c if self.lim is not None else 0
        return 3 * qkv_tokens * c * c + n * c * c + 2 * hp * wp * Mh * Mw * c + lim  # qkv, proj, attention, LIM

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, lim={self.lim is not None}"
