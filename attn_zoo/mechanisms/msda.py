"""DilateFormer's MSDA, multi-scale dilated attention (Jiao et al., IEEE TMM 2023).

Follows JIAOJIAYUASD/dilateformer (models/dilateformer.py, ``MultiDilatelocalAttention`` and
``DilateAttention``). The heads are split into one contiguous group per dilation; each group runs sliding-window
attention over the k x k neighbours of every query at its own dilation. The neighbourhood computation is the
shared kernel :func:`attn_zoo.layers.backends.neighborhood_attention`; this file only arranges the heads.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from attn_zoo.errors import KnobError, MechanismInputError
from attn_zoo.layers.backends import neighborhood_attention, takes_heads_last
from attn_zoo.layers.neighborhood import neighborhood_attention_macs
from attn_zoo.mechanisms.base import NeighborhoodMixer
from attn_zoo.registry import register_mechanism

# The kernel's own paths, made known to the backend registry so `attn-zoo list` and forced backends can check
# them ("reference" is registered already and always runs).


@register_mechanism("msda")
class MultiScaleDilatedAttention(NeighborhoodMixer):
    """Multi-scale dilated attention: head groups attend to their k x k neighbours at dilations r_1..r_n.

    qkv = Linear(C, 3C) on channels-last tokens (the official 1x1 Conv2d(C, 3C) is the same map: its weight
    ``(3C, C, 1, 1)`` reshaped to ``(3C, C)`` loads as ours). Its output is read as ``(3, n, C/n)``, i.e.
    q/k/v outermost, then the n dilation groups, then ``(heads/n, head_dim)`` inside a group, exactly the
    official ``reshape(B, 3, n, C // n, H, W)``; since the groups are contiguous runs of heads this is also the
    usual ``(3, heads, head_dim)`` layout. Group i attends, per head, softmax(scale q . k_j) over the k x k
    neighbours j of each query at dilation r_i (centred window, scale = head_dim^-0.5); the groups' outputs are
    concatenated in order and projected by Linear(C, C). No relative position bias (DilateFormer adds a
    conditional position encoding in the block, which the harness's ``pos_encoding="cpe"`` provides).

    Official behaviour reproduced by default (``border="zero"``): the window is ``nn.Unfold`` with zero padding,
    so neighbours outside the map are zero keys and values that stay in the softmax (logit 0, value 0).
    ``"masked"`` drops them from the softmax (clean variant); ``"inward"`` is neighbourhood attention as
    NAT/DiNAT/natten define it (window shifted inward at the border; the map must be at least
    kernel * dilation on each side). The official code writes each group's output into a view of its input
    (``x[i] = ...``), which overwrites the caller's tensor; this version concatenates new tensors instead, so
    the input is never modified and autograd sees no in-place write.

    Args:
        kernel: window size k (an odd int, or an odd (k_h, k_w) pair; the paper uses 3 x 3).
        dilations: one dilation per head group, e.g. (1, 2, 3); num_heads must be divisible by their number.
        border: out-of-map neighbours: "zero" (official: zero keys/values kept in the softmax), "masked"
            (left out of the softmax) or "inward" (NAT/natten window shifted inward; map >= kernel * dilation).
        qkv_bias: learnable bias in the qkv projection (DilateFormer's models use True).
    """

    paper = "DilateFormer (Jiao et al., IEEE TMM 2023), JIAOJIAYUASD/dilateformer"
    backends = ("cpu_fast", "reference", "natten")

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        feat_size: tuple[int, int] | None = None,
        kernel: int | tuple[int, int] = 3,
        dilations: tuple[int, ...] = (1, 2, 3),
        border: Literal["zero", "masked", "inward"] = "zero",
        qkv_bias: bool = True,
    ):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.validate_knobs({"kernel": kernel, "dilations": dilations})
        n = len(dilations)
        if num_heads % n:
            raise KnobError(
                f"mechanism 'msda': num_heads ({num_heads}) must be divisible by the number of dilations "
                f"({n}, dilations={tuple(dilations)}): every dilation gets num_heads / {n} heads; "
                f"use a multiple of {n} heads, or a number of dilations that divides {num_heads}"
            )
        self.kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        self.dilations = tuple(dilations)
        self.border = border
        self.heads_per_group = num_heads // n
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    @classmethod
    def validate_knobs(cls, knobs: dict[str, Any]) -> None:
        kernel = knobs.get("kernel", 3)
        sides = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        if any(k < 1 or k % 2 == 0 for k in sides):
            raise KnobError(f"mechanism 'msda': kernel must be odd and >= 1 (a centred window), got {kernel!r}")
        dilations = tuple(knobs.get("dilations", (1,)))
        if not dilations or any(d < 1 for d in dilations):
            raise KnobError(f"mechanism 'msda': dilations must be a non-empty list of ints >= 1, got {dilations!r}")

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; any H, W with border "zero"/"masked"."""
        B, H, W, C = self.check_input(x)
        if self.border == "inward":
            need_h, need_w = (k * max(self.dilations) for k in self.kernel)
            if need_h > H or need_w > W:
                raise MechanismInputError(
                    f"msda: border='inward' needs a map of at least kernel * largest dilation = {need_h}x{need_w} "
                    f"(kernel {self.kernel}, dilations {self.dilations}), got {H}x{W}; use border='zero' "
                    "(official) or 'masked', or smaller dilations"
                )
        backend = self.pick_backend(x)
        h, g = self.num_heads, self.heads_per_group
        qkv = self.qkv(x).reshape(B, H, W, 3, h, self.head_dim)
        heads_last = takes_heads_last("neighborhood", backend, x.device)
        if heads_last:  # natten's own layout, (B, H, W, heads, head_dim): views of the projection, no copy
            q, k, v = qkv.unbind(3)
            axis = 3
        else:  # (3, B, heads, H, W, head_dim): q/k/v outermost, heads grouped by dilation
            q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).contiguous().unbind(0)
            axis = 1
        groups = [
            neighborhood_attention(
                q.narrow(axis, i * g, g),
                k.narrow(axis, i * g, g),
                v.narrow(axis, i * g, g),
                self.kernel,
                r,
                scale=self.scale,
                border=self.border,
                backend=backend,
                heads_last=heads_last,
            )
            for i, r in enumerate(self.dilations)
        ]
        if heads_last:
            return self.proj(torch.cat(groups, dim=3).reshape(B, H, W, C))
        out = torch.cat(groups, dim=1)  # (B, heads, H, W, head_dim): new tensor, no write into x
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C))

    def neighborhood_call_size(self, batch: int, height: int, width: int) -> tuple[int, int]:
        return batch * self.heads_per_group, height * width  # one kernel call per dilation group

    def attention_macs(self, height: int, width: int) -> int:
        n, c = height * width, self.dim
        window = neighborhood_attention_macs(
            1, self.num_heads, height, width, self.kernel, self.head_dim, self.head_dim
        )
        return 4 * n * c * c + window  # qkv + proj, then q.k and attn.v over k*k neighbours per head

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}, dilations={self.dilations}, border={self.border!r}"
