"""GC-ViT: local window attention alternating with global query attention, Hatamizadeh et al., ICML 2023.

Follows NVlabs/GCVit (models/gc_vit.py) and timm's reimplementation (timm/models/gcvit.py), which agree.
Even blocks of a stage attend inside M x M windows (qkv Linear(C, 3C) + relative position bias, Swin without
shift); odd blocks keep only keys and values (Linear(C, 2C)) and take their queries from the stage's global
query: a downsampled M x M map of the whole stage input, made ONCE per stage by :class:`GlobalQueryGenerator`
and shared by every global block of the stage. Each image's query serves all of that image's windows.

Generalisations of the official code, which only runs at its training resolution:
- the number of pooling levels comes from the stage size and the window (``pooling_levels``), not from
  ``image_resolution // 4, // 8, ...``; at 224 it gives the official 3, 2, 0, 0 levels of GCViT-XXT;
- maps that are not multiples of the window are zero-padded at the bottom/right and cropped (as Swin), padded
  tokens take part in attention as keys, unmasked, as in Swin's official detection code;
- when a stage map is no larger than the window, the window shrinks to the map (``clamp_window``, as Swin);
- a run-time map whose pooled size is not M x M gets an adaptive max-pool to M x M (``query_resize``); at the
  sizes the official design fits (side = M * 2^levels) this is the identity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from attn_zoo.errors import KnobError, MechanismInputError
from attn_zoo.layers.attention import WINDOW_BACKENDS
from attn_zoo.layers.mbconv import MbConvBlock
from attn_zoo.layers.window import RelativePositionBias, Windows
from attn_zoo.mechanisms.base import Mixer
from attn_zoo.registry import register_mechanism

QueryResize = Literal["adaptive_max", "error"]


def fit_window(window: int, feat_size: tuple[int, int] | None, clamp: bool) -> int:
    """The window side a stage uses: ``window``, or the smaller map side when the map is no larger (``clamp``)."""
    if clamp and feat_size is not None and min(feat_size) <= window:
        return min(feat_size)
    return window


def pooling_levels(side: int, window: int) -> int:
    """How many MaxPool(3, s2, p1) halvings (``n -> ceil(n / 2)``) keep a map side at or above ``window``.

    The official GC-ViT hard-codes 3, 2, 1 keep-size, 1 keep-size blocks for stages at image/4 .. image/32;
    this is the same count derived from the stage size: 56 -> 7 at M=7 is 3 levels, 28 -> 7 is 2, 14 at
    M=14 and 7 at M=7 are 0 (one keep-size block). timm uses ``int(log2(side / window))``, equal whenever
    side = M * 2^k; counting ceil-halvings also fits sides such as 13 -> 7 exactly.
    """
    levels = 0
    while math.ceil(side / 2 ** (levels + 1)) >= window:
        levels += 1
    return levels


class GlobalQueryGenerator(nn.Module):
    """GC-ViT's global query generator (official ``GlobalQueryGen``, timm ``FeatureBlock``).

    ``(B, H, W, C) -> (B, M, M, C)``: ``levels`` times [x + (DWConv3x3 -> GELU -> SE(0.25) -> Conv1x1)] then
    MaxPool 3 s2 p1, or one keep-size block when ``levels`` is 0 (the stage map is already at the window).
    No norm and no projection follow (as official; timm's ``global_norm`` is off). Runs on the unpadded stage
    input, after the stage's downsampler. If the pooled map is not M x M (a run-time size other than the
    build-time one), ``resize="adaptive_max"`` applies ``adaptive_max_pool2d`` to M x M (it repeats entries
    when the map is smaller), ``"error"`` refuses with the sides that fit.
    """

    def __init__(self, dim: int, feat_size: tuple[int, int], window: int, resize: QueryResize = "adaptive_max"):
        super().__init__()
        self.dim, self.window, self.resize = dim, window, resize
        self.feat_size = tuple(feat_size)
        self.levels = pooling_levels(min(self.feat_size), window)
        self.blocks = nn.Sequential()  # names as timm's FeatureBlock (conv1, pool1, conv2, ...) for its weights
        for i in range(max(1, self.levels)):
            self.blocks.add_module(f"conv{i + 1}", MbConvBlock(dim))
            if i < self.levels:
                self.blocks.add_module(f"pool{i + 1}", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    def pooled_size(self, height: int, width: int) -> tuple[int, int]:
        """The map the pooling levels make from a ``height x width`` input, before any resize."""
        f = 2**self.levels
        return math.ceil(height / f), math.ceil(width / f)

    def allowed_sides(self) -> tuple[int, int]:
        """Smallest and largest input side that pools to exactly the window (what ``resize="error"`` accepts)."""
        f = 2**self.levels
        return (self.window - 1) * f + 1, self.window * f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise MechanismInputError(
                f"gcvit: the global query generator expects (B, H, W, {self.dim}), got {tuple(x.shape)}"
            )
        H, W = x.shape[1:3]
        pooled = self.pooled_size(H, W)
        M = self.window
        if pooled != (M, M) and self.resize == "error":
            lo, hi = self.allowed_sides()
            raise MechanismInputError(
                f"gcvit: the global query generator (built for a {self.feat_size[0]}x{self.feat_size[1]} stage map, "
                f"window {M}, {self.levels} pooling levels) turns a {H}x{W} map into {pooled[0]}x{pooled[1]}, "
                f"not the {M}x{M} the windows need; allowed stage map sides: {lo}..{hi} "
                "(or query_resize='adaptive_max' to resize the query map)"
            )
        q = self.blocks(x.permute(0, 3, 1, 2))
        if pooled != (M, M):
            q = F.adaptive_max_pool2d(q, M)
        return q.permute(0, 2, 3, 1)

    def attention_macs(self, height: int, width: int) -> int:
        """Multiply-accumulates for one image at a ``height x width`` stage map (pooling counts none)."""
        total, h, w = 0, height, width
        for i in range(max(1, self.levels)):
            total += MbConvBlock.macs(self.dim, h, w)
            if i < self.levels:
                h, w = math.ceil(h / 2), math.ceil(w / 2)
        return total

    def extra_repr(self) -> str:
        return f"window={self.window}, levels={self.levels}, feat_size={self.feat_size}, resize={self.resize!r}"


@register_mechanism("gcvit")
class GCViTAttention(Mixer):
    """GC-ViT attention: local window attention, or global query attention with the stage's global query.

    Local (``global_query=False``): q, k, v = Linear(C, 3C) per window; softmax(q k^T / sqrt(d) + B) v; proj.
    Global (``global_query=True``): k, v = Linear(C, 2C), no query projection: q is the stage's global query
    ``(B, M, M, C)`` (split into heads, scaled by d^-0.5), the same for every window of that image; logits +
    relative position bias B; proj Linear(C, C). Blocks alternate local / global (official: even local, odd
    global); ``global_query=False`` for the whole model is the all-local ablation (then no generator is built).

    The global query is the per-stage context: the harness builds it with :meth:`build_context` and computes
    it once on the stage input. Standalone users of a global block build it the same way and pass it:
    ``gen = GCViTAttention.build_context(dim, heads, (H, W), knobs); mixer(x, context=gen(x))``.

    Args:
        window: window side M (GCViT-XXT uses 7, 7, 14, 7 per stage at 224).
        global_query: global attention with the stage's global query instead of local window attention;
            the default schedule alternates local and global blocks.
        qkv_bias: learnable bias in the qkv (local) / kv (global) projection.
        clamp_window: if the stage map is no larger than the window, use window = smaller map side (needs the
            stage size, which the harness passes); the official code only runs where this never triggers.
        query_resize: what the global query generator does when a run-time map does not pool to M x M:
            'adaptive_max' resizes the pooled map with adaptive max pooling, 'error' refuses naming the sides
            that fit. Nothing is resized where the map pools to exactly M x M (GCViT-XXT at 224).
    """

    paper = "GC-ViT (Hatamizadeh et al., ICML 2023), NVlabs/GCVit; timm gcvit"
    block_pattern = ({"global_query": False}, {"global_query": True})
    backends = WINDOW_BACKENDS

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        feat_size: tuple[int, int] | None = None,
        window: int = 7,
        global_query: bool = False,
        qkv_bias: bool = True,
        clamp_window: bool = True,
        query_resize: QueryResize = "adaptive_max",
    ):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.validate_knobs({"window": window})
        M = fit_window(window, self.feat_size, clamp_window)
        self.window = (M, M)
        self.global_query = global_query
        self.scale = self.head_dim**-0.5
        # both named qkv, as official and timm: Linear(C, 2C) for keys and values only in global blocks
        self.qkv = nn.Linear(dim, (2 if global_query else 3) * dim, bias=qkv_bias)
        self.rel_pos = RelativePositionBias(self.window, num_heads)
        self.proj = nn.Linear(dim, dim)
        self.windows = Windows(self.window, num_heads)  # no shift, padded keys unmasked (as Swin's official code)

    @classmethod
    def validate_knobs(cls, knobs: Mapping[str, Any]) -> None:
        if knobs.get("window", 1) < 1:
            raise KnobError(f"mechanism 'gcvit': window must be >= 1, got {knobs['window']}")

    @classmethod
    def build_context(
        cls, dim: int, num_heads: int, feat_size: tuple[int, int] | None, knobs: Mapping[str, Any]
    ) -> GlobalQueryGenerator:
        """The stage's global query generator, ``(B, H, W, C) -> (B, M, M, C)``, for a stage map ``feat_size``."""
        if feat_size is None:
            raise MechanismInputError(
                "gcvit: build_context needs feat_size, the stage map (H, W), to choose the pooling levels"
            )
        window = fit_window(knobs.get("window", 7), tuple(feat_size), knobs.get("clamp_window", True))
        return GlobalQueryGenerator(dim, tuple(feat_size), window, knobs.get("query_resize", "adaptive_max"))

    @property
    def uses_context(self) -> bool:
        return self.global_query

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; any H, W (padded to the window, then cropped).

        ``context``: the stage's global query ``(B, M, M, C)``; required by global blocks, ignored by local ones.
        """
        B, H, W, _ = self.check_input(x)
        q_global = self._global_query(context, B) if self.global_query else None
        plan = self.windows.plan(H, W, x.device)
        windows = plan.partition(x)  # (B, nW, N, C), image-major
        if q_global is None:
            q, k, v = plan.split_heads(self.qkv(windows), 3).unbind(0)
        else:
            k, v = plan.split_heads(self.qkv(windows), 2).unbind(0)
            q = self._repeat_query(q_global, plan.num_windows)
        bias = self.rel_pos().unsqueeze(0)  # (1, heads, N, N)
        out = self.attend(q, k, v, scale=self.scale, bias=bias)
        # proj per window before the reverse, over the padded tokens too (as official; attention_macs counts
        # them). Merging into the padded map first would save a copy and give the same outputs, but the proj
        # gradient would sum its tokens in another order (float rounding), so training would not repeat exactly.
        return plan.reverse(self.proj(plan.merge_heads(out)))

    def _global_query(self, context: Any, batch: int) -> torch.Tensor:
        """Check the context and split it into heads: ``(B, M, M, C) -> (B, heads, M*M, d)``."""
        M = self.window[0]
        if context is None:
            raise MechanismInputError(
                "gcvit: a global block (global_query=True) needs the stage's global query as `context`; the "
                "harness passes it, standalone users build it with GCViTAttention.build_context(dim, num_heads, "
                "(H, W), knobs) and call mixer(x, context=generator(x))"
            )
        expected = (batch, M, M, self.dim)
        if not isinstance(context, torch.Tensor) or tuple(context.shape) != expected:
            got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise MechanismInputError(f"gcvit: the global query must have shape (B, M, M, C) = {expected}, got {got}")
        return context.reshape(batch, M * M, self.num_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def _repeat_query(q: torch.Tensor, num_windows: int) -> torch.Tensor:
        """``(B, heads, N, d) -> (B, nW, heads, N, d)``: every window of image b gets image b's query.

        A released version tiled the query over the flattened (B * nW) windows instead, so windows received
        another image's query (NVlabs/GCVit issue 10); keeping the batch axis apart makes that impossible.
        """
        return q.unsqueeze(1).expand(-1, num_windows, -1, -1, -1)

    def attention_macs(self, height: int, width: int) -> int:
        """qkv (3C^2 local, 2C^2 global) + q k^T and attn v (2 M^2 C) + proj (C^2) per padded token.

        The stage's global query generator is counted once per stage by ``GlobalQueryGenerator.attention_macs``.
        """
        M = self.window[0]
        n = math.ceil(height / M) * M * math.ceil(width / M) * M
        c = self.dim
        return ((3 if self.global_query else 4) * c * c + 2 * M * M * c) * n

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, global_query={self.global_query}"
