"""The one backbone every mechanism runs in: stem, stages of pre-norm blocks, final norm, pooling, head.

Tokens stay channels-last ``(B, H, W, C)`` throughout. Only the mixer inside each block changes between
mechanisms; what a mechanism owns (its position bias, its per-stage context) lives inside the mechanism.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.layers import DropPath, LayerScale, Mlp, trunc_normal_
from torch import nn

from attn_zoo.backbone.config import ModelConfig
from attn_zoo.layers.downsample import build_downsample
from attn_zoo.layers.heads import build_head
from attn_zoo.layers.pos_enc import PosConv
from attn_zoo.layers.stems import build_stem, stem_out_size
from attn_zoo.mechanisms.base import Mixer
from attn_zoo.registry import create_mechanism, get_mechanism


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(LS(mixer(LN(x)))), then x + DropPath(LS(MLP(LN(x))))``.

    With ``cpe`` (DilateFormer) a conditional position encoding ``x + DWConv3x3(x)`` runs first.
    """

    def __init__(
        self,
        dim: int,
        mixer: Mixer,
        mlp_ratio: float,
        eps: float,
        drop_path: float,
        layer_scale: float | None,
        cpe: bool,
        drop: float = 0.0,
    ):
        super().__init__()
        self.cpe = PosConv(dim) if cpe else None
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.mixer = mixer
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        if self.cpe is not None:
            x = self.cpe(x)
        x = x + self.drop_path1(self.ls1(self.mixer(self.norm1(x), context)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class Stage(nn.Module):
    """Optional downsampler, then blocks. Per-stage contexts (e.g. GC-ViT's global query) are computed once
    on the stage input and handed to every block of the mechanism that asked for them."""

    def __init__(
        self,
        downsample: nn.Module | None,
        blocks: list[Block],
        contexts: dict[str, nn.Module],
        peg: nn.Module | None,
    ):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.ModuleList(blocks)
        self.contexts = nn.ModuleDict(contexts)
        self.peg = peg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        context = {name: module(x) for name, module in self.contexts.items()}
        for i, block in enumerate(self.blocks):
            x = block(x, context.get(block.mixer.name))
            if i == 0 and self.peg is not None:
                x = self.peg(x)  # ScalableViT's PEG sits after the first block of each stage
        return x


class Backbone(nn.Module):
    """The harness model built from a :class:`ModelConfig`. ``(B, C_in, H, W) -> (B, num_classes)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        c = config
        self.stem = build_stem(c.stem, c.in_chans, c.dims[0], c.patch_size, c.norm_eps)
        size = stem_out_size(c.stem, (c.img_size, c.img_size), c.patch_size)
        total = sum(c.depths)
        # stochastic depth grows linearly over all blocks (plain Python so meta-device builds work)
        rates = [c.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, cursor = [], 0
        for i, (dim, depth, heads) in enumerate(zip(c.dims, c.depths, c.heads)):
            down = None
            if i > 0:
                down = build_downsample(c.downsample, c.dims[i - 1], dim, c.norm_eps)
                size = (math.ceil(size[0] / 2), math.ceil(size[1] / 2))
            blocks, contexts = [], {}
            for j, (spec, occurrence) in enumerate(c.block_mixers(i)):
                mixer = create_mechanism(
                    spec.name,
                    dim,
                    heads,
                    feat_size=size,
                    backend=c.backend,
                    stage=i,
                    occurrence=occurrence,
                    **spec.knobs,
                )
                if spec.name not in contexts and mixer.uses_context:
                    knobs = get_mechanism(spec.name).resolve_knobs(spec.knobs, stage=i, occurrence=occurrence)
                    ctx = type(mixer).build_context(dim, heads, size, knobs)
                    if ctx is not None:
                        contexts[spec.name] = ctx
                blocks.append(
                    Block(
                        dim,
                        mixer,
                        c.mlp_ratio,
                        c.norm_eps,
                        rates[cursor + j],
                        c.layer_scale,
                        cpe=c.pos_encoding == "cpe",
                        drop=c.drop_rate,
                    )
                )
            cursor += depth
            peg = PosConv(dim) if c.pos_encoding == "peg" else None
            stages.append(Stage(down, blocks, contexts, peg))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(c.dims[-1], eps=c.norm_eps)
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = build_head(c.head, c.dims[-1], c.num_classes, c.head_hidden, c.norm_eps)
        self.apply(_init_weights)

    @property
    def num_features(self) -> int:
        return self.config.dims[-1]

    def mixers(self) -> list[Mixer]:
        return [m for m in self.modules() if isinstance(m, Mixer)]

    def attention_backends(self) -> list[str]:
        """The attention paths the mixers took (``last_backend``), sorted, for a result row.

        If no mixer has run yet (measurements that run only copies of the model), one image goes through the
        model first, in eval mode and without gradients, so the row names the paths that ``auto`` picks here.
        """
        if not any(m.last_backend for m in self.mixers()):
            p = next(self.parameters())
            size = self.config.img_size
            was_training = self.training
            try:
                with torch.no_grad():
                    self.eval()(torch.zeros(1, self.config.in_chans, size, size, device=p.device, dtype=p.dtype))
            finally:
                self.train(was_training)
        return sorted({m.last_backend for m in self.mixers() if m.last_backend})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, h, w, C_last)``, normalised."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x.mean(dim=(1, 2))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    # one initialisation for every mechanism (timm's ViT/Swin convention); mechanisms init their own tables
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
