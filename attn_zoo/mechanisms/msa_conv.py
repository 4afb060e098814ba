"""TiC's MSA-Conv: multi-head self-attention inside a convolution (Zhang et al., arXiv 2310.04134).

Follows the official operator, zs670980918/MSA-Conv ``core/op/Transformer_in_Convolution.py`` (class
``MSA_Conv_2d``) with its im2col kernels (``msa_conv.cpp``, ``msa_conv_cuda.cu``): a 1x1 conv makes q, k, v;
every position attends to the ``k_h x k_w`` window of positions a convolution of that kernel and dilation
would read (zero "same" padding, stride 1); the attention output plus the input goes through the
convolution's own weights and a ReLU. The two capacity strategies of the paper have no public code; the
exact definitions chosen here (cyclic shift, inter-pooling) are in the class docstring and
docs/mechanisms/tic.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from attn_zoo.errors import KnobError, MechanismInputError
from attn_zoo.layers.backends import neighborhood_attention
from attn_zoo.mechanisms.base import NeighborhoodMixer
from attn_zoo.registry import register_mechanism

# Head i is rolled in direction DIRECTIONS[i % 4] (row, column): down, right, up, left. Down and right come
# first so that a two-head mixer still shifts along both axes.
DIRECTIONS: tuple[tuple[int, int], ...] = ((1, 0), (0, 1), (-1, 0), (0, -1))


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@register_mechanism("msa_conv")
class MSAConv(NeighborhoodMixer):
    """MSA-Conv: self-attention over each position's convolution window, then the convolution's own weights.

    ``q, k, v = Linear(C, 3C)(x)`` (the official 1x1 conv), split into h heads of d = C/h channels. For every
    position p and head, logits ``scale * q_p . k_n`` over the ``k_h x k_w`` neighbours ``n = p + (a, b) * dil``
    (centred; zero "same" padding); softmax over the neighbours; ``o_p = sum_n P_pn v_n``. Then
    ``y = act(Conv_{k_h x k_w}(o + x))`` with ``Conv`` C -> C, stride 1, "same" padding.

    Faithful to the official operator by default (single head there; h heads here, any float dtype):
    - border ``"zero"``: a neighbour outside the map is a zero key and zero value that takes part in the
      softmax with logit exactly 0 (the im2col kernel writes 0 outside the image; nothing is masked).
    - scale ``C ** -0.5`` with C the FULL channel count (``input_channel ** -0.5``), not the head width;
      with one head the two agree. ``qk_scale="head_dim"`` gives ``d ** -0.5``.
    - residual ``o + x`` before the conv; the conv has no bias (``bias=False``); ReLU at the end. The
      official ``nn.ReLU(inplace=True)(out)`` discards its return value but acts in place on ``out``, so
      the returned tensor IS rectified (checked by running it).
    - the official conv gets no dilation argument: ``conv="standard"`` (dilation 1) at any attention dilation.
    Differences, all forced by the mixer contract or the kernel: the conv is always "same" padded (the
    official ``padding=1`` default keeps the size only for 3x3 kernels); stride 1 only (a token mixer keeps
    the map size); the official attention dropout (``dropout=0.1``, training only) is not reproduced (the
    harness regularises with drop path; evaluation outputs are unaffected).

    Multi-directional cyclic shift (``shift = s > 0``, no official code): head i is rolled by
    ``s * DIRECTIONS[i % 4]`` pixels, i.e. (+s, 0), (0, +s), (-s, 0), (0, -s) for heads 0, 1, 2, 3 (then
    repeating), with ``torch.roll`` semantics (+s along rows moves content down). ``shift_mode="map"``
    rolls that head's q, k and v, attends, and rolls the output back: the neighbourhoods become cyclic
    (tokens at one image edge attend to the opposite edge) except across one zero-padded seam, which moves
    inside the image (for (+s, 0): between rows H-1-s and H-s), elsewhere for each direction.
    ``shift_mode="kv"`` rolls only k and v: query p
    attends to the window centred at ``p - s * direction`` (cyclically), so the heads look in four
    displaced directions and the layer's reach grows by s in each.

    Inter-pooling (``inter_pool = f > 1``; the author's description in the repository's issue 2): q, k, v are
    zero-padded at the bottom/right to multiples of f; q is rearranged losslessly into f^2 sub-images
    ``q[:, a::f, b::f]`` (pixel-unshuffle, batch becomes B * f^2); k and v are downsampled by a
    stride-f, kernel-f conv (depthwise by default, ``pool_conv``; bias) to ``(H/f, W/f)`` and shared by all
    f^2 sub-images; each sub-image attends locally (same kernel, dilation and border, on the ``H/f x W/f``
    grid), and the outputs are rearranged back (pixel-shuffle) and cropped to ``H x W``. The shift, if any,
    is applied to the full-resolution map before the padding and pooling.

    Args:
        kernel: attention window and conv kernel ``k`` or ``(k_h, k_w)``, odd (e.g. 3, (5, 1), (1, 5)).
        dilation: attention dilation ``d`` or ``(d_h, d_w)``; also the conv's dilation with ``conv="dilated"``.
        conv: the convolution's own weights: "standard" (dense C -> C, dilation 1; the official class at any
            attention dilation), "dilated" (dense, dilation d), "depthwise" (groups = C, dilation 1).
        border: out-of-map neighbours: "zero" (official: zero key/value, logit 0, in the softmax), "masked"
            (left out of the softmax) or "inward" (NAT's window shifted inward; needs the attention grid
            at least k * d on each side).
        qk_scale: "official": C ** -0.5 with C the full width; "head_dim": (C/h) ** -0.5.
        qkv_bias: learnable bias in the q, k, v projection (the official 1x1 conv has one).
        conv_bias: learnable bias in the conv (the official conv has none).
        residual: add the input to the attention output before the conv (official).
        activation: after the conv: "relu" (official), "gelu" or "none" (a linear output, like the other
            mixers' output projections).
        shift: multi-directional cyclic shift in pixels; 0 turns it off.
        shift_mode: "map" (roll q, k, v per head and roll the output back) or "kv" (roll only k and v).
        inter_pool: inter-pooling factor f; 1 turns it off.
        pool_conv: the k/v downsampling conv of inter-pooling: "depthwise" (2C * f^2 weights) or "full"
            (dense C -> C per tensor, 2 C^2 f^2 weights).
    """

    paper = "TiC: Exploring Vision Transformer in Convolution (Zhang et al., arXiv 2310.04134), zs670980918/MSA-Conv"
    backends = ("cpu_fast", "reference", "natten")

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        feat_size: tuple[int, int] | None = None,
        kernel: int | tuple[int, int] = 3,
        dilation: int | tuple[int, int] = 1,
        conv: Literal["standard", "dilated", "depthwise"] = "standard",
        border: Literal["zero", "masked", "inward"] = "zero",
        qk_scale: Literal["official", "head_dim"] = "official",
        qkv_bias: bool = True,
        conv_bias: bool = False,
        residual: bool = True,
        activation: Literal["relu", "gelu", "none"] = "relu",
        shift: int = 0,
        shift_mode: Literal["map", "kv"] = "map",
        inter_pool: int = 1,
        pool_conv: Literal["depthwise", "full"] = "depthwise",
    ):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.validate_knobs({"kernel": kernel, "dilation": dilation, "shift": shift, "inter_pool": inter_pool})
        self.kernel, self.dil = _pair(kernel), _pair(dilation)
        self.conv_kind, self.border, self.residual = conv, border, residual
        self.shift, self.shift_mode, self.inter_pool = shift, shift_mode, inter_pool
        self.scale = dim**-0.5 if qk_scale == "official" else self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.pool = None
        if inter_pool > 1:
            # one conv over the 2C channels [k; v]: groups 2C (depthwise) or 2 (a dense C -> C conv each)
            groups = 2 * dim if pool_conv == "depthwise" else 2
            self.pool = nn.Conv2d(2 * dim, 2 * dim, inter_pool, inter_pool, groups=groups)
        conv_dil = self.dil if conv == "dilated" else (1, 1)
        padding = tuple(dd * (kk - 1) // 2 for kk, dd in zip(self.kernel, conv_dil))
        groups = dim if conv == "depthwise" else 1
        self.conv = nn.Conv2d(dim, dim, self.kernel, 1, padding, conv_dil, groups=groups, bias=conv_bias)
        self.act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "none": nn.Identity()}[activation]

    @classmethod
    def validate_knobs(cls, knobs: Mapping[str, Any]) -> None:
        kernel = _pair(knobs.get("kernel", 3))
        if any(k < 1 or k % 2 == 0 for k in kernel):
            raise KnobError(
                f"mechanism 'msa_conv': kernel must be odd and >= 1 on both axes (a centred window), "
                f"got {knobs['kernel']}"
            )
        if any(d < 1 for d in _pair(knobs.get("dilation", 1))):
            raise KnobError(f"mechanism 'msa_conv': dilation must be >= 1, got {knobs['dilation']}")
        if knobs.get("shift", 0) < 0:
            raise KnobError(f"mechanism 'msa_conv': shift must be >= 0 pixels (0 = off), got {knobs['shift']}")
        if knobs.get("inter_pool", 1) < 1:
            raise KnobError(f"mechanism 'msa_conv': inter_pool must be >= 1 (1 = off), got {knobs['inter_pool']}")

    def neighborhood_call_size(self, batch: int, height: int, width: int) -> tuple[int, int]:
        hs, ws = self.attention_grid(height, width)  # inter-pooling: f^2 sub-images per image on a grid / f
        return batch * self.inter_pool**2 * self.num_heads, hs * ws

    def attention_grid(self, height: int, width: int) -> tuple[int, int]:
        """The map the local attention runs on: ``(ceil(H/f), ceil(W/f))`` with inter-pooling, else ``(H, W)``."""
        f = self.inter_pool
        return -(-height // f), -(-width // f)

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; any H, W (with ``border="inward"``: grid >= k * d per side)."""
        B, H, W, C = self.check_input(x)
        backend = self.pick_backend(x)
        self._check_size(H, W)
        h, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(B, H, W, 3, h, d).permute(3, 0, 4, 1, 2, 5).unbind(0)  # (B, h, H, W, d)
        if self.shift:
            k, v = self._roll(k, 1), self._roll(v, 1)
            if self.shift_mode == "map":
                q = self._roll(q, 1)
        if self.inter_pool > 1:
            out = self._pooled_attention(q, k, v, backend)
        else:
            out = self._attend(q, k, v, backend)
        if self.shift and self.shift_mode == "map":
            out = self._roll(out, -1)
        out = out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C)
        if self.residual:
            out = out + x
        out = self.conv(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.act(out)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
        return neighborhood_attention(
            q, k, v, self.kernel, self.dil, scale=self.scale, border=self.border, backend=backend
        )

    def _roll(self, t: torch.Tensor, sign: int) -> torch.Tensor:
        """Roll head i of ``(B, h, H, W, d)`` by ``sign * shift * DIRECTIONS[i % 4]`` (rows, columns)."""
        out = torch.empty_like(t)
        for g, (dr, dc) in enumerate(DIRECTIONS[: self.num_heads]):
            s = sign * self.shift
            out[:, g::4] = torch.roll(t[:, g::4], shifts=(s * dr, s * dc), dims=(2, 3))
        return out

    def _pooled_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
        """Inter-pooling: q as f^2 lossless sub-images against k, v pooled by a stride-f conv."""
        B, h, H, W, d = q.shape
        f = self.inter_pool
        Hs, Ws = self.attention_grid(H, W)
        pad = (0, 0, 0, Ws * f - W, 0, Hs * f - H)  # zero rows/columns at the bottom/right
        q, k, v = (F.pad(t, pad) for t in (q, k, v))
        # q[b, :, i*f + a, j*f + c] -> sub-image (b, a, c) at (i, j): batch index b * f^2 + a * f + c
        q = q.reshape(B, h, Hs, f, Ws, f, d).permute(0, 3, 5, 1, 2, 4, 6).reshape(B * f * f, h, Hs, Ws, d)
        kv = torch.cat([k, v], dim=1).permute(0, 1, 4, 2, 3).reshape(B, 2 * h * d, Hs * f, Ws * f)
        kv = self.pool(kv).reshape(B, 2, h, d, Hs, Ws).permute(1, 0, 2, 4, 5, 3)  # (2, B, h, Hs, Ws, d)
        k, v = kv.repeat_interleave(f * f, dim=1).unbind(0)  # every sub-image of image b sees b's pooled k, v
        out = self._attend(q, k, v, backend)  # (B * f^2, h, Hs, Ws, d)
        out = out.reshape(B, f, f, h, Hs, Ws, d).permute(0, 3, 4, 1, 5, 2, 6).reshape(B, h, Hs * f, Ws * f, d)
        return out[:, :, :H, :W]

    def _check_size(self, H: int, W: int) -> None:
        if self.border == "inward":
            grid = self.attention_grid(H, W)
            if any(g < kk * dd for g, kk, dd in zip(grid, self.kernel, self.dil)):
                where = f" (the {H}x{W} map inter-pooled by {self.inter_pool})" if self.inter_pool > 1 else ""
                raise MechanismInputError(
                    f"msa_conv: border='inward' needs an attention grid of at least kernel * dilation = "
                    f"{self.kernel[0] * self.dil[0]}x{self.kernel[1] * self.dil[1]}, got {grid[0]}x{grid[1]}{where}; "
                    "use border='zero' or 'masked', or a smaller kernel, dilation or inter_pool"
                )

    def attention_macs(self, height: int, width: int) -> int:
        """qkv + (inter-pooling conv) + local attention + the conv, per image; FlopCounterMode's count / 2.

        The conv is part of the mechanism (the official module owns it), so it counts here. Out-of-map
        neighbours are counted, as the kernel computes them; rolls, the residual and softmax are free.
        """
        n, c = height * width, self.dim
        kk = self.kernel[0] * self.kernel[1]
        macs = 3 * n * c * c + n * c * (c // self.conv.groups) * kk
        if self.pool is None:
            return macs + n * kk * 2 * c
        hs, ws = self.attention_grid(height, width)
        m = hs * ws * self.inter_pool**2  # padded pixels: f^2 sub-images of hs x ws queries
        pool = m * 2 * c * (c // (self.pool.groups // 2))  # kernel f x f over m / f^2 cells = m per channel
        return macs + pool + m * kk * 2 * c

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernel={self.kernel}, dilation={self.dil}, conv={self.conv_kind}, "
            f"border={self.border}, shift={self.shift}/{self.shift_mode}, inter_pool={self.inter_pool}"
        )
