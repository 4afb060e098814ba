"""Global multi-head self-attention over all tokens (ViT / DeiT): the baseline every table is relative to."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attn_zoo.layers.attention import DENSE_BACKENDS
from attn_zoo.mechanisms.base import Mixer
from attn_zoo.registry import register_mechanism


@register_mechanism("global")
class GlobalAttention(Mixer):
    """Global multi-head self-attention: softmax(q k^T / sqrt(d)) v over all H*W tokens.

    qkv = Linear(C, 3C), heads of C/h channels, output projection Linear(C, C) (Dosovitskiy et al. 2021;
    Touvron et al. 2021). Quadratic in the number of tokens.

    Args:
        qkv_bias: learnable bias in the qkv projection.
    """

    paper = "ViT (Dosovitskiy et al., ICLR 2021) / DeiT (Touvron et al., ICML 2021)"
    backends = DENSE_BACKENDS + ("xformers",)

    def __init__(self, dim: int, num_heads: int, *, feat_size: tuple[int, int] | None = None, qkv_bias: bool = True):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        B, H, W, C = self.check_input(x)
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = self.attend(*qkv.unbind(0), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))

    def attention_macs(self, height: int, width: int) -> int:
        n, c = height * width, self.dim
        return 4 * n * c * c + 2 * n * n * c  # qkv + proj, then q k^T and attn v
