"""Swin Transformer presets (Liu et al., ICCV 2021; microsoft/Swin-Transformer)."""

from attn_zoo.backbone.config import MixerSpec, ModelConfig
from attn_zoo.backbone.presets import register_preset


@register_preset("swin_t", "Swin-T: patch 4, C=96, depths 2-2-6-2, heads 3-6-12-24, M=7 (28.3M, 4.5G MACs)")
def swin_t() -> ModelConfig:
    return ModelConfig(
        name="swin_t",
        img_size=224,
        stem="patch",
        patch_size=4,
        dims=(96, 192, 384, 768),
        depths=(2, 2, 6, 2),
        heads=(3, 6, 12, 24),
        mlp_ratio=4.0,
        norm_eps=1e-5,
        downsample="patch_merging",
        drop_path_rate=0.2,
        head="linear",
        mixer=MixerSpec("swin", {"window": 7}),
    )
