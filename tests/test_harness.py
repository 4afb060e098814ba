"""The shared harness: config validation, schedules, shapes, per-stage context plumbing, presets."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

import attn_zoo
from attn_zoo.backbone import Backbone, MixerSpec, ModelConfig, create_model, get_preset, list_presets
from attn_zoo.errors import ConfigError, UnknownNameError
from attn_zoo.mechanisms.base import Mixer
from attn_zoo.registry import PerStage, register_mechanism

SMALL = dict(
    img_size=32,
    patch_size=2,
    dims=(12, 24, 48, 96),
    depths=(2, 2, 2, 2),
    heads=(3, 6, 12, 24),
    num_classes=5,
    stem="conv",
    downsample="conv",
)


@pytest.mark.parametrize("stem", ["patch", "conv", "conv_bn", "gcvit"])
@pytest.mark.parametrize("downsample", ["patch_merging", "conv", "conv_bn", "reduce_size"])
def test_every_stem_and_downsampler_builds_and_runs(stem, downsample):
    model = Backbone(ModelConfig(**{**SMALL, "stem": stem, "downsample": downsample}))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("pos", ["none", "peg", "cpe"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_position_encodings_and_heads(pos, head):
    model = Backbone(ModelConfig(**SMALL, pos_encoding=pos, head=head, head_hidden=64, layer_scale=1e-5))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert (model.stages[0].peg is not None) == (pos == "peg")
    assert (model.stages[0].blocks[0].cpe is not None) == (pos == "cpe")


@pytest.mark.parametrize("size", [32, 40, 48, 33])
def test_shapes_at_several_resolutions_including_non_multiples(size):
    config = ModelConfig(**{**SMALL, "img_size": size}, mixer=MixerSpec("swin", {"window": 3}))
    model = Backbone(config).eval()
    feats = model.forward_features(torch.randn(2, 3, size, size))
    assert feats.shape[0] == 2 and feats.shape[-1] == 96
    assert model(torch.randn(2, 3, size, size)).shape == (2, 5)


def test_schedules_one_everywhere_pattern_and_per_stage():
    one = Backbone(ModelConfig(**SMALL, mixer="swin"))
    assert [b.mixer.shift_size > 0 for b in one.stages[0].blocks] == [False, True]
    per_stage = Backbone(ModelConfig(**SMALL, mixer=["swin", "swin", "global", "global"]))
    assert [type(s.blocks[0].mixer).__name__ for s in per_stage.stages] == [
        "SwinAttention",
        "SwinAttention",
        "GlobalAttention",
        "GlobalAttention",
    ]
    pattern = Backbone(ModelConfig(**{**SMALL, "depths": (4, 2, 2, 2)}, mixer=[["global", "swin"]] * 4))
    kinds = [type(b.mixer).__name__ for b in pattern.stages[0].blocks]
    assert kinds == ["GlobalAttention", "SwinAttention", "GlobalAttention", "SwinAttention"]
    # the swin blocks of the pattern alternate W-MSA / SW-MSA among themselves
    assert [b.mixer.shift_size > 0 for b in pattern.stages[0].blocks[1::2]] == [False, True]


def test_per_stage_knobs_and_feat_size_reach_the_mixer():
    config = ModelConfig(**SMALL, mixer=MixerSpec("swin", {"window": PerStage((4, 2))}))
    model = Backbone(config)
    assert [s.blocks[0].mixer.window[0] for s in model.stages] == [4, 2, 2, 2]
    assert [s.blocks[0].mixer.feat_size for s in model.stages] == [(16, 16), (8, 8), (4, 4), (2, 2)]


@register_mechanism("context_probe_for_test")
class ContextProbe(Mixer):
    """Adds its stage context (the stage input's mean) to the output, to check the plumbing."""

    calls: ClassVar[list[Any]] = []

    def __init__(self, dim: int, num_heads: int, *, feat_size=None):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.proj = torch.nn.Linear(dim, dim)

    @classmethod
    def build_context(cls, dim, num_heads, feat_size, knobs):
        class MeanContext(torch.nn.Module):
            def forward(self, x):
                ContextProbe.calls.append(tuple(x.shape))
                return x.mean(dim=(1, 2), keepdim=True)

        return MeanContext()

    def forward(self, x, context=None):
        assert context is not None and context.shape == (x.shape[0], 1, 1, x.shape[-1])
        return self.proj(x) + context


def test_per_stage_context_computed_once_per_stage_and_passed_to_blocks():
    ContextProbe.calls.clear()
    model = Backbone(ModelConfig(**SMALL, mixer=[["context_probe_for_test", "global"]] * 4))
    model(torch.randn(2, 3, 32, 32))
    assert ContextProbe.calls == [(2, 16, 16, 12), (2, 8, 8, 24), (2, 4, 4, 48), (2, 2, 2, 96)]
    assert set(model.stages[0].contexts) == {"context_probe_for_test"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(dims=(12, 24, 48)), "dims must be 4 positive integers"),
        (dict(heads=(5, 6, 12, 24)), "must be divisible by heads"),
        (dict(stem="vit"), "stem 'vit' unknown; allowed: patch, conv, conv_bn, gcvit"),
        (dict(downsample="pool"), "downsample 'pool' unknown"),
        (dict(mixer="swim"), "unknown mechanism 'swim'"),
        (dict(mixer=MixerSpec("swin", {"window": "big"})), "knob 'window' got 'big'"),
        (dict(mixer=["swin", "global"]), "one entry per stage"),
        (dict(drop_path_rate=1.5), "drop rates must be in"),
        (dict(patch_size=3), "patch_size 3 not allowed"),
    ],
)
def test_config_errors_name_the_field_and_what_is_allowed(changes, message):
    with pytest.raises((ConfigError, UnknownNameError), match=message):
        ModelConfig(**{**SMALL, **changes}).validate()


def test_config_round_trips_through_plain_dicts():
    config = ModelConfig(**SMALL, mixer=[[MixerSpec("swin", {"window": PerStage((4, 2))}), "global"]] * 4)
    again = ModelConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    torch.manual_seed(0)
    a = Backbone(config)
    torch.manual_seed(0)
    b = Backbone(again)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_presets_listed_and_unknown_preset_error():
    assert {"swin_t", "zoo_s32", "zoo_224"} <= set(list_presets())
    with pytest.raises(UnknownNameError, match=r"unknown preset 'swin_x'.*swin_t"):
        get_preset("swin_x")


def test_create_model_overrides_and_public_api():
    model = attn_zoo.create_model("zoo_s32", num_classes=3, mixer="swin")
    assert model.config.num_classes == 3
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert create_model({"preset": "zoo_s32", "num_classes": 7}).config.num_classes == 7


def test_stochastic_depth_schedule_and_determinism():
    config = ModelConfig(**SMALL, drop_path_rate=0.3)
    model = Backbone(config)
    rates = [
        b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0 for s in model.stages for b in s.blocks
    ]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.3) < 1e-9 and rates == sorted(rates)
    torch.manual_seed(3)
    y1 = Backbone(config).eval()(torch.ones(1, 3, 32, 32))
    torch.manual_seed(3)
    y2 = Backbone(config).eval()(torch.ones(1, 3, 32, 32))
    assert torch.equal(y1, y2)
