"""The harness (stages, per-stage mixer schedule) and the presets built from it."""

from attn_zoo.backbone.config import MixerSpec, ModelConfig
from attn_zoo.backbone.harness import Backbone, Block, Stage
from attn_zoo.backbone.presets import create_model, get_preset, list_presets, register_preset

__all__ = [
    "Backbone",
    "Block",
    "MixerSpec",
    "ModelConfig",
    "Stage",
    "create_model",
    "get_preset",
    "list_presets",
    "register_preset",
]
