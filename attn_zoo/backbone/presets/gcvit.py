"""GC-ViT presets (Hatamizadeh et al., ICML 2023; NVlabs/GCVit, timm gcvit)."""

from attn_zoo.backbone.config import MixerSpec, ModelConfig
from attn_zoo.backbone.presets import register_preset
from attn_zoo.registry import PerStage


@register_preset(
    "gcvit_xxt", "GCViT-XXTiny: C=64, depths 2-2-6-2, heads 2-4-8-16, windows 7-7-14-7, MLP 3 (12.0M, 2.1G MACs)"
)
def gcvit_xxt() -> ModelConfig:
    # The windows are the paper's choice at 224 (stage maps 56, 28, 14, 7: the 14 makes stage 3 one window),
    # so they are this preset's knob (PerStage), not the mechanism's stage_defaults: in the harness family at
    # other resolutions gcvit keeps its default M=7, clamped to small stage maps.
    return ModelConfig(
        name="gcvit_xxt",
        img_size=224,
        stem="gcvit",
        patch_size=4,
        dims=(64, 128, 256, 512),
        depths=(2, 2, 6, 2),
        heads=(2, 4, 8, 16),
        mlp_ratio=3.0,
        norm_eps=1e-5,  # nn.LayerNorm's default, as the official code and timm
        downsample="reduce_size",
        drop_path_rate=0.2,
        layer_scale=None,  # only GC-ViT-S and larger use layer scale (1e-5)
        head="linear",
        mixer=MixerSpec("gcvit", {"window": PerStage((7, 7, 14, 7))}),
    )
