"""ScalableViT's SSA, scalable self-attention (Yang et al., ECCV 2022).

Follows Yangr116/ScalableViT (image_classification/models/scalablevit.py, class ``SSA``). Two factors free
the widths of attention from the input: the spatial factor s (``r_n``) pools the keys/values to N/s^2
tokens, the channel factor c (``r_c``) sets the width of queries and keys to C' = int(C*c); values come
back to width C. Queries are not pooled, so every token keeps its own output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from attn_zoo.errors import KnobError, MechanismInputError
from attn_zoo.layers.attention import DENSE_BACKENDS
from attn_zoo.mechanisms.base import Mixer
from attn_zoo.registry import register_mechanism


@register_mechanism("ssa")
class ScalableSelfAttention(Mixer):
    """Scalable self-attention: full-resolution queries against keys/values pooled by s, widths scaled by c.

    With C' = int(C*c) and h heads:
    key/value source = GELU(LN(Conv1x1_{C->C'}(DWConv_{k=s, stride=s}(x)))), N' = (H/s)(W/s) tokens;
    q = Linear(C->C')(x) (all N tokens), k = Linear(C'->C')(src), v = Linear(C'->C)(src); per head q, k have
    C'/h channels and v has C/h; softmax(scale q k^T) v over the N' keys; proj Linear(C, C).
    At s = 1 it is plain multi-head attention (q = Linear(C, C), kv = Linear(C, 2C)), as the official code.

    Official quirks reproduced by default:
    - the scale is (C/h * c)^-0.5 at every s, also at s = 1 where q and k have only C/h channels
      (ScalableViT-S uses c = 1 in its s = 1 stage, so this only matters for other settings);
      ``qk_scale="head_dim"`` scales by the true per-head q/k width instead.
    - when H or W is not a multiple of s, the strided reduction conv floors: the last H mod s rows and
      W mod s columns never become keys (``remainder="drop"``). ``remainder="pad"`` zero-pads the bottom
      and right up to a multiple of s instead, so every token is pooled into some key (and maps smaller
      than s work). With ``"drop"`` a map smaller than s in either side is refused with a clear error.
    - the LayerNorm over C' uses eps 1e-5 (PyTorch's default), not the model's 1e-6.

    Args:
        r_n: spatial reduction factor s (kernel and stride of the depthwise reduction conv); 1 = no pooling.
        r_c: channel factor c: queries and keys have C' = int(C*c) channels (must divide by the heads).
        qkv_bias: learnable bias in the q, k, v (or q, kv) projections.
        qk_scale: "official": (C/h * c)^-0.5 at every s; "head_dim": d^-0.5 with d the per-head width of
            q and k (C'/h at s > 1, C/h at s = 1).
        remainder: rows/columns past the last multiple of s: "drop" (official, the strided conv floors)
            or "pad" (zero-pad bottom/right to a multiple of s; any map size works).
    """

    paper = "ScalableViT (Yang et al., ECCV 2022), Yangr116/ScalableViT"
    stage_defaults: ClassVar[Mapping[str, Sequence[Any]]] = {"r_n": (8, 4, 2, 1), "r_c": (1.25, 1.25, 1.25, 1.0)}
    backends = DENSE_BACKENDS + ("xformers",)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        feat_size: tuple[int, int] | None = None,
        r_n: int = 1,
        r_c: float = 1.0,
        qkv_bias: bool = True,
        qk_scale: Literal["official", "head_dim"] = "official",
        remainder: Literal["drop", "pad"] = "drop",
    ):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.validate_knobs({"r_n": r_n, "r_c": r_c})
        self.r_n, self.r_c, self.remainder = r_n, r_c, remainder
        self.qk_dim = int(dim * r_c) if r_n > 1 else dim
        if self.qk_dim < num_heads or self.qk_dim % num_heads:
            raise MechanismInputError(
                f"ssa: int(C * r_c) = int({dim} * {r_c}) = {self.qk_dim} query/key channels must be a positive "
                f"multiple of num_heads ({num_heads}); choose r_c so that C * r_c divides by the heads"
            )
        official = (self.head_dim * r_c) ** -0.5
        self.scale = official if qk_scale == "official" else (self.qk_dim // num_heads) ** -0.5
        if r_n > 1:
            self.q = nn.Linear(dim, self.qk_dim, bias=qkv_bias)
            self.reduction = nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size=r_n, stride=r_n, groups=dim),
                nn.Conv2d(dim, self.qk_dim, kernel_size=1),
            )
            self.norm = nn.LayerNorm(self.qk_dim)
            self.act = nn.GELU()
            self.k = nn.Linear(self.qk_dim, self.qk_dim, bias=qkv_bias)
            self.v = nn.Linear(self.qk_dim, dim, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if r_n > 1 and remainder == "drop":
            self.ignores = {
                "positions": "remainder='drop' (official): the rows and columns past the last multiple of r_n "
                "reach the output only through their queries, so not at all where a single key is left"
            }

    @classmethod
    def validate_knobs(cls, knobs: dict[str, Any]) -> None:
        if knobs.get("r_n", 1) < 1:
            raise KnobError(f"mechanism 'ssa': r_n must be an integer >= 1, got {knobs['r_n']}")
        if knobs.get("r_c", 1.0) <= 0:
            raise KnobError(f"mechanism 'ssa': r_c must be > 0, got {knobs['r_c']}")

    def reduced_size(self, height: int, width: int) -> tuple[int, int]:
        """Key/value grid for a ``height x width`` map: floor (``"drop"``) or ceil (``"pad"``) of side / s."""
        s = self.r_n
        if self.remainder == "pad":
            return -(-height // s), -(-width // s)
        return height // s, width // s

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; with ``remainder="drop"`` both sides must be at least ``r_n``."""
        B, H, W, C = self.check_input(x)
        s, h, N = self.r_n, self.num_heads, H * W
        if s > 1 and self.remainder == "drop" and min(H, W) < s:
            raise MechanismInputError(
                f"ssa: the {H}x{W} map is smaller than r_n={s}, so the strided reduction leaves no keys; "
                f"use remainder='pad' or r_n <= {min(H, W)}"
            )
        if s > 1:
            q = self.q(x).reshape(B, N, h, -1).transpose(1, 2)
            src = x.permute(0, 3, 1, 2)
            if self.remainder == "pad":
                src = F.pad(src, (0, (-W) % s, 0, (-H) % s))
            src = self.reduction(src).flatten(2).transpose(1, 2)  # (B, N', C')
            src = self.act(self.norm(src))
            k = self.k(src).reshape(B, -1, h, self.qk_dim // h).transpose(1, 2)
            v = self.v(src).reshape(B, -1, h, self.head_dim).transpose(1, 2)
        else:
            q = self.q(x).reshape(B, N, h, self.head_dim).transpose(1, 2)
            k, v = self.kv(x).reshape(B, N, 2, h, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.attend(q, k, v, scale=self.scale)  # (B, h, N, C/h)
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))

    def attention_macs(self, height: int, width: int) -> int:
        n, c, cq, s = height * width, self.dim, self.qk_dim, self.r_n
        if s == 1:
            return 4 * n * c * c + 2 * n * n * c  # q + kv + proj, then q k^T and attn v
        hr, wr = self.reduced_size(height, width)
        m = hr * wr
        projections = n * c * cq + m * c * s * s + m * c * cq + m * cq * cq + m * cq * c + n * c * c
        return projections + n * m * (cq + c)  # q, dw conv, 1x1 conv, k, v, proj; q k^T and attn v

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r_n={self.r_n}, r_c={self.r_c}, qk_dim={self.qk_dim}"
