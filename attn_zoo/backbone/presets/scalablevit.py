"""ScalableViT presets (Yang et al., ECCV 2022; Yangr116/ScalableViT, ``scalable_vit_small``).

Built only from harness pieces: the overlapping conv stem (k7 s4 p3 + LN), conv downsampling (k3 s2 p1 +
LN), a PEG after the first block of each stage, pre-norm blocks with LayerNorm eps 1e-6, and the MLP head
Linear(512 -> 4096) + LN + GELU + Linear. Even blocks are IWSA (M = 7), odd blocks SSA with the paper's
per-stage s = (8, 4, 2, 1) and c = (1.25, 1.25, 1.25, 1). See docs/mechanisms/scalablevit.md for the counts.
"""

from attn_zoo.backbone.config import MixerSpec, ModelConfig
from attn_zoo.backbone.presets import register_preset
from attn_zoo.registry import PerStage


@register_preset(
    "scalablevit_s", "ScalableViT-S: C=64, depths 2-2-20-2, heads 2-4-8-16, IWSA/SSA alternating (32.0M, 4.27G MACs)"
)
def scalablevit_s() -> ModelConfig:
    iwsa = MixerSpec("iwsa", {"window": 7, "qkv_bias": True})
    ssa = MixerSpec("ssa", {"r_n": PerStage((8, 4, 2, 1)), "r_c": PerStage((1.25, 1.25, 1.25, 1.0)), "qkv_bias": True})
    return ModelConfig(
        name="scalablevit_s",
        img_size=224,
        stem="conv",
        patch_size=4,
        dims=(64, 128, 256, 512),
        depths=(2, 2, 20, 2),
        heads=(2, 4, 8, 16),
        mlp_ratio=4.0,
        norm_eps=1e-6,
        downsample="conv",
        pos_encoding="peg",
        drop_path_rate=0.2,  # the official README trains ScalableViT-S with --drop-path 0.2
        head="mlp",
        head_hidden=4096,
        mixer=[[iwsa, ssa]] * 4,
    )
