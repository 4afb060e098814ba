"""Map timm checkpoints onto the harness's parameter names, so a preset can run the published weights.

Each converter takes a timm ``state_dict`` and returns one for the matching preset; it renames, never
changes values. Used by the equivalence tests (timm model with random weights vs ours with the same
weights) and by users who have the published checkpoints on disk.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# (timm pattern, our replacement), applied in order to every key
_SWIN_RULES = (
    (r"^patch_embed\.", "stem."),
    (r"^layers\.(\d+)\.", r"stages.\1."),
    (r"\.attn\.relative_position_bias_table$", ".mixer.rel_pos.relative_position_bias_table"),
    (r"\.attn\.", ".mixer."),
    (r"^head\.fc\.", "head."),
)


def _rename(state_dict: Mapping[str, torch.Tensor], rules, skip: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        if any(s in key for s in skip):
            continue
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def swin_from_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``swin_*`` (timm >= 0.9 layout: downsample at the start of a stage) -> ``swin_t`` and friends."""
    return _rename(state_dict, _SWIN_RULES, skip=("relative_position_index", "attn_mask"))


_GCVIT_RULES = (
    (r"^stages\.(\d+)\.global_block\.", r"stages.\1.contexts.gcvit."),
    (r"^stages\.\d+\.norm\.", "norm."),  # timm's last stage ends with the final norm (stage_norm)
    (r"\.attn\.", ".mixer."),
    (r"^head\.fc\.", "head."),
)


def gcvit_from_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``gcvit_*`` -> ``gcvit_xxt`` and friends (stem, downsamplers and SE already share timm's names)."""
    return _rename(state_dict, _GCVIT_RULES, skip=("relative_position_index",))


# Yangr116/ScalableViT's ``scalable_vit_*`` (a timm-registered model) -> ``scalablevit_s``
_SCALABLEVIT_RULES = (
    (r"^patch_embeds\.0\.proj\.", "stem.proj."),
    (r"^patch_embeds\.0\.norm\.", "stem.norm."),
    (r"^patch_embeds\.(\d+)\.proj\.", r"stages.\1.downsample.conv."),
    (r"^patch_embeds\.(\d+)\.norm\.", r"stages.\1.downsample.norm."),
    (r"^pos_block\.(\d+)\.proj\.0\.", r"stages.\1.peg.proj."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"\.attn\.lim_func\.", ".mixer.lim."),
    (r"\.attn\.norm_act\.0\.", ".mixer.norm."),
    (r"\.attn\.", ".mixer."),
)


def scalablevit_from_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official ScalableViT checkpoint (``scalable_vit_small``) -> ``scalablevit_s``; values unchanged."""
    return _rename(state_dict, _SCALABLEVIT_RULES, skip=())


# JIAOJIAYUASD/dilateformer's ``dilateformer_*`` (a timm-registered model) -> ``dilateformer_t``. The official
# stage i ends with the downsampler that the harness puts at the start of stage i + 1.
_DILATEFORMER_RULES = (
    (r"^patch_embed\.proj\.", "stem.proj."),
    (r"^stages\.(\d+)\.downsample\.proj\.0\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample.conv."),
    (r"^stages\.(\d+)\.downsample\.proj\.1\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample.norm."),
    (r"\.pos_embed\.", ".cpe.proj."),
    (r"\.attn\.", ".mixer."),
)


def dilateformer_from_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official DilateFormer checkpoint (``dilateformer_tiny``) -> ``dilateformer_t``.

    Renames, and views MSDA's 1x1 ``Conv2d`` qkv weight ``(3C, C, 1, 1)`` as the equivalent ``Linear`` weight
    ``(3C, C)``; values and channel order are unchanged.
    """
    out = _rename(state_dict, _DILATEFORMER_RULES, skip=())
    for key, value in out.items():
        if key.endswith(".mixer.qkv.weight") and value.dim() == 4:
            out[key] = value.reshape(value.shape[0], value.shape[1])
    return out
