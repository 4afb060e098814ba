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
from attn_zoo.layers.window import RelativePositionBias, Windows
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
        # official quirks: pad then roll, shift mask -100 (not -inf), padded keys unmasked unless mask_padding
        self.windows = Windows(
            self.window,
            num_heads,
            shift=self.shift_size,
            shift_mask_value=mask_value,
            pad_mask_value=mask_value if mask_padding else None,
        )

    @classmethod
    def validate_knobs(cls, knobs: dict[str, Any]) -> None:
        if knobs.get("window", 1) < 1:
            raise KnobError(f"mechanism 'swin': window must be >= 1, got {knobs['window']}")

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; any H, W (padded to the window internally, then cropped).

        Math of the official code: zero-pad bottom/right to multiples of M, roll by -M/2 (SW-MSA), partition
        into windows, attention per window with bias + mask, merge heads, reverse, roll back, crop, proj
        (proj is per token, so it may follow the crop). For SW-MSA the token moves are one precomputed gather
        each way; W-MSA partitions and reverses with strided copies, which are cheaper there
        (:class:`attn_zoo.layers.window.Windows`, the path IWSA and GC-ViT take too). Same tensors either way,
        fewer copies than the official code.
        """
        _, H, W, _ = self.check_input(x)
        plan = self.windows.plan(H, W, x.device)
        windows = plan.partition(x)  # padded, rolled (SW-MSA) and partitioned: (B, nW, N, C)
        qkv = plan.split_heads(self.qkv(windows), 3)  # (3, B, nW, heads, N, d)
        bias = self.rel_pos().unsqueeze(0)  # (1, heads, N, N)
        if plan.mask is not None:
            bias = bias + plan.mask.to(bias.dtype)  # (nW, heads, N, N): one additive term
        out = self.attend(*qkv.unbind(0), scale=self.scale, bias=bias)
        return self.proj(plan.merge(out))

    def attention_macs(self, height: int, width: int) -> int:
        """qkv and attention over the padded map; proj over the real tokens (it follows the crop)."""
        Mh, Mw = self.window
        padded = -(-height // Mh) * Mh * (-(-width // Mw) * Mw)
        c = self.dim
        return 3 * padded * c * c + height * width * c * c + 2 * padded * Mh * Mw * c

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, shift={self.shift_size}"
