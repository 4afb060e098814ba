"""The project's own TiC-style model (Zhang et al., arXiv 2310.04134 publish no code or configuration of theirs).

MSA-Conv in every block of a four-stage harness model, sized like the other ~tiny presets. Our choices, each
documented in docs/mechanisms/tic.md: ScalableViT's overlapping conv stem (k7 s4 p3 + LN) and conv
downsampler (k3 s2 p1 + LN); no position encoding (MSA-Conv has no position table, and the zero-padded
convolution inside it already gives the network position information, as the conditional position encodings
of CPVT do); 3x3 MSA-Conv with the official defaults (standard conv, zero border, scale C^-0.5, residual,
ReLU); the paper's two capacity strategies switched on: inter-pooling f = 2 in the two high-resolution
stages, and the multi-directional cyclic shift (1 pixel = k//2 * d) in every second block, as Swin
alternates its shifted windows.
"""

from attn_zoo.backbone.config import MixerSpec, ModelConfig
from attn_zoo.backbone.presets import register_preset
from attn_zoo.registry import PerStage


@register_preset("tic", "Ours (no published TiC model): MSA-Conv 3x3, C=64, depths 2-2-6-2, heads 2-4-8-16")
def tic() -> ModelConfig:
    pool = PerStage((2, 2, 1, 1))
    plain = MixerSpec("msa_conv", {"kernel": 3, "inter_pool": pool})
    shifted = MixerSpec("msa_conv", {"kernel": 3, "inter_pool": pool, "shift": 1})
    return ModelConfig(
        name="tic",
        img_size=224,
        stem="conv",
        patch_size=4,
        dims=(64, 128, 256, 512),
        depths=(2, 2, 6, 2),
        heads=(2, 4, 8, 16),
        mlp_ratio=4.0,
        norm_eps=1e-6,
        downsample="conv",
        pos_encoding="none",
        drop_path_rate=0.1,
        head="linear",
        mixer=[[plain, shifted]] * 4,
    )
