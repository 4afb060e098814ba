"""Axial attention: each token attends to its own row, or to its own column (Ho et al., 2019).

The example plugin of attn_zoo, started with ``attn-zoo new axial`` and edited. It follows the unmasked row
and column attention layers of the Axial Transformer (Ho, Kalchbrenner, Weissenborn, Salimans: "Axial Attention
in Multidimensional Transformers", arXiv:1912.12180), the same factorisation Axial-DeepLab (Wang et al., ECCV
2020) uses for vision backbones: full multi-head attention along one axis of the map at a time, so a token
attends to W (or H) tokens instead of H*W, and two consecutive layers (row, then column) connect every pair.

Choices, and how they differ from the papers:
- Blocks alternate row and column attention (``block_pattern``, as Swin alternates W-MSA and SW-MSA); the
  Axial Transformer stacks the same two layer kinds, each with its own MLP, as here. Axial-DeepLab instead puts
  a height-axis and a width-axis layer inside one residual block, with no MLP between them.
- No position terms inside the attention: Axial-DeepLab's position-sensitive relative terms are left out; the
  harness adds the same position encoding to every mechanism (zoo: a PEG after each stage's first block).
- Any H, W: rows and columns are sequences of any length, so nothing is padded.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from attn_zoo import register_mechanism
from attn_zoo.layers.attention import DENSE_BACKENDS
from attn_zoo.mechanisms.base import Mixer

Axis = Literal["row", "column"]


@register_mechanism("axial")  # the same name as the entry point in pyproject.toml
class AxialAttention(Mixer):
    """Axial attention: multi-head softmax attention along the rows (or the columns) of the map only.

    Row attention: token (i, j) attends to (i, 0..W-1); column attention: to (0..H-1, j). qkv = Linear(C, 3C),
    heads of C/h channels, softmax(q k^T / sqrt(d)) v along the axis, output projection Linear(C, C).
    Blocks alternate row and column attention; cost 4 N C^2 + 2 N L C for N = H*W tokens, L = W or H.

    Args:
        axis: 'row' attends along the width (within a row), 'column' along the height; the default schedule
            alternates row and column blocks.
        qkv_bias: learnable bias in the qkv projection.
    """

    paper = "Axial attention (Ho et al., arXiv:1912.12180, 2019; Wang et al., Axial-DeepLab, ECCV 2020)"
    block_pattern = ({"axis": "row"}, {"axis": "column"})
    backends = DENSE_BACKENDS

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        feat_size: tuple[int, int] | None = None,
        axis: Axis = "row",
        qkv_bias: bool = True,
    ):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.axis = axis
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; any H, W."""
        B, _, _, C = self.check_input(x)
        if self.axis == "column":
            x = x.transpose(1, 2)  # columns become rows: (B, W, H, C)
        R, L = x.shape[1:3]  # R sequences of L tokens each
        qkv = self.qkv(x).reshape(B, R, L, 3, self.num_heads, self.head_dim).permute(3, 0, 1, 4, 2, 5)
        out = self.attend(*qkv.unbind(0), scale=self.scale)  # (B, R, h, L, d)
        out = self.proj(out.transpose(2, 3).reshape(B, R, L, C))
        return out.transpose(1, 2) if self.axis == "column" else out

    def attention_macs(self, height: int, width: int) -> int:
        n, c = height * width, self.dim
        length = width if self.axis == "row" else height
        return 4 * n * c * c + 2 * n * length * c  # qkv + proj, then q k^T and attn v along the axis

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, axis={self.axis}"
