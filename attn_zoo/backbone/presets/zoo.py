"""The harness family: one backbone for fair comparison, every mechanism dropped into the same slots.

Shared choices (fixed for all mechanisms): overlapping conv stem, conv downsampler with LayerNorm, a PEG
(``x + DWConv3x3(x)`` after the first block of each stage, as CPVT recommends) as the only position
encoding the harness adds, pre-norm blocks, even depths so alternating mechanisms (Swin's W/SW-MSA,
GC-ViT's local/global) get both block kinds in every stage, heads divisible by 3 so MSDA's three dilation
groups fit. Budgets are matched by scaling the width (``attn_zoo.budget``).
"""

from attn_zoo.backbone.config import ModelConfig
from attn_zoo.backbone.presets import register_preset
from attn_zoo.registry import PerStage

# the knobs zoo_s32's stage maps (16, 8, 4, 2) need: windows and reductions sized to them (as in
# suites/quick.toml and the equal-budget suites' [mechanisms.*] sections)
ZOO_S32_KNOBS = {
    "global": {},
    "swin": {"window": 4},
    "ssa": {"r_n": PerStage((4, 2, 1, 1))},
    "iwsa": {"window": 4},
    "msda": {},
    "gcvit": {"window": 4},
    "msa_conv": {},
}


@register_preset("zoo_s32", "Harness family for 32x32 inputs (CIFAR, Pathfinder): patch 2, C=36, 2-2-2-2")
def zoo_s32() -> ModelConfig:
    return ModelConfig(
        name="zoo_s32",
        img_size=32,
        num_classes=10,
        stem="conv",
        patch_size=2,
        dims=(36, 72, 144, 288),
        depths=(2, 2, 2, 2),
        heads=(3, 6, 12, 24),
        mlp_ratio=2.0,
        norm_eps=1e-6,
        downsample="conv",
        pos_encoding="peg",
        drop_path_rate=0.05,
        head="linear",
        mixer="global",
    )


@register_preset("zoo_224", "Harness family for 224x224 inputs: patch 4, C=72, 2-2-6-2 (DilateFormer-T sized)")
def zoo_224() -> ModelConfig:
    return ModelConfig(
        name="zoo_224",
        img_size=224,
        num_classes=1000,
        stem="conv",
        patch_size=4,
        dims=(72, 144, 288, 576),
        depths=(2, 2, 6, 2),
        heads=(3, 6, 12, 24),
        mlp_ratio=4.0,
        norm_eps=1e-6,
        downsample="conv",
        pos_encoding="peg",
        drop_path_rate=0.1,
        head="linear",
        mixer="global",
    )
