"""DilateFormer presets (Jiao et al., IEEE TMM 2023; JIAOJIAYUASD/dilateformer, ``dilateformer_tiny``).

Built only from harness pieces: the overlapping conv stem 3 -> 16 -> 32 -> 64 -> C (3x3 convs without bias,
strides 1, 2, 1, 2, BN + GELU after the first three: the official ``PatchEmbed(patch_way="overlaping")``),
Conv3x3 s2 + BN downsampling (the official ``PatchMerging("conv3_2")``, which the official code runs at the end
of stages 1-3 and the harness at the start of stages 2-4: the same model), a conditional position encoding
``x + DWConv3x3(x)`` before every block (``cpe_per_block=True``), pre-norm blocks with LayerNorm eps 1e-6,
final LayerNorm, average pooling and a linear head. MSDA (kernel 3, dilations 1, 2, 3) in stages 1-2, global
multi-head self-attention in stages 3-4. See docs/mechanisms/dilateformer.md for the counts.
"""

from attn_zoo.backbone.config import MixerSpec, ModelConfig
from attn_zoo.backbone.presets import register_preset


@register_preset(
    "dilateformer_t",
    "DilateFormer-T: C=72, depths 2-2-6-2, heads 3-6-12-24, MSDA (k3, r 1-2-3) in stages 1-2, global in 3-4 "
    "(17.24M, 3.16G MACs)",
)
def dilateformer_t() -> ModelConfig:
    msda = MixerSpec("msda", {"kernel": 3, "dilations": (1, 2, 3), "border": "zero", "qkv_bias": True})
    glob = MixerSpec("global", {"qkv_bias": True})
    return ModelConfig(
        name="dilateformer_t",
        img_size=224,
        stem="conv_bn",
        stem_hidden=16,
        patch_size=4,
        dims=(72, 144, 288, 576),
        depths=(2, 2, 6, 2),
        heads=(3, 6, 12, 24),
        mlp_ratio=4.0,
        norm_eps=1e-6,
        downsample="conv_bn",
        pos_encoding="cpe",
        drop_path_rate=0.1,
        head="linear",
        mixer=[msda, msda, glob, glob],
    )
