"""The mechanism registry: register, list with knobs, create by name, and the errors for bad names/knobs."""

from __future__ import annotations

import pytest
import torch

import attn_zoo
from attn_zoo.errors import KnobError, MechanismInputError, UnknownNameError
from attn_zoo.mechanisms.base import Mixer
from attn_zoo.registry import PerStage, get_mechanism, list_mechanisms, register_mechanism


def test_builtins_listed_with_knobs_and_defaults():
    mechs = attn_zoo.list_mechanisms()
    assert {"global", "swin"} <= set(mechs)
    swin = mechs["swin"]
    assert swin.knobs["window"].default == 7
    assert swin.knobs["window"].type_name == "int"
    assert swin.knobs["shift"].default is False
    assert "window side" in swin.knobs["window"].doc
    assert swin.defaults()["mask_value"] == -100.0


def test_create_by_name_with_knobs():
    m = attn_zoo.create_mechanism("swin", dim=32, num_heads=4, window=4)
    assert isinstance(m, Mixer) and m.window == (4, 4) and m.name == "swin"
    x = torch.randn(2, 8, 8, 32)
    assert m(x).shape == x.shape


def test_unknown_mechanism_lists_what_exists():
    with pytest.raises(UnknownNameError) as err:
        attn_zoo.create_mechanism("swim", dim=32, num_heads=4)
    msg = str(err.value)
    assert "unknown mechanism 'swim'" in msg and "global" in msg and "swin" in msg


def test_unknown_knob_lists_the_mechanisms_knobs():
    with pytest.raises(UnknownNameError) as err:
        attn_zoo.create_mechanism("swin", dim=32, num_heads=4, windw=4)
    assert "windw" in str(err.value) and "window" in str(err.value) and "shift" in str(err.value)


@pytest.mark.parametrize(
    ("knob", "value", "expect"),
    [("window", "7", "int"), ("window", 7.5, "int"), ("shift", 1, "bool"), ("mask_value", "x", "float")],
)
def test_knob_type_errors_say_what_is_allowed(knob, value, expect):
    with pytest.raises(KnobError, match=rf"knob '{knob}' got .*allowed: {expect}"):
        attn_zoo.create_mechanism("swin", dim=32, num_heads=4, **{knob: value})


def test_knob_value_constraint():
    with pytest.raises(KnobError, match="window must be >= 1"):
        attn_zoo.create_mechanism("swin", dim=32, num_heads=4, window=0)


def test_block_pattern_and_per_stage_resolution():
    spec = get_mechanism("swin")
    assert spec.resolve_knobs({}, occurrence=0)["shift"] is False
    assert spec.resolve_knobs({}, occurrence=1)["shift"] is True
    assert spec.resolve_knobs({"shift": False}, occurrence=1)["shift"] is False  # user knobs win
    assert spec.resolve_knobs({"window": PerStage((7, 5, 3))}, stage=1)["window"] == 5
    assert spec.resolve_knobs({"window": PerStage((7, 5, 3))}, stage=9)["window"] == 3


def test_register_a_new_mechanism_and_duplicate_name():
    @register_mechanism("identity_for_test")
    class Identity(Mixer):
        """Returns its input.

        Args:
            gain: multiplies the output.
        """

        def __init__(self, dim: int, num_heads: int, *, feat_size=None, gain: float = 1.0):
            super().__init__(dim, num_heads, feat_size=feat_size)
            self.gain = gain

        def forward(self, x, context=None):
            self.check_input(x)
            return x * self.gain

    try:
        assert "identity_for_test" in list_mechanisms()
        assert get_mechanism("identity_for_test").knobs["gain"].doc == "multiplies the output."
        m = attn_zoo.create_mechanism("identity_for_test", dim=8, num_heads=2, gain=2)
        assert m.gain == 2.0 and isinstance(m.gain, float)
        with pytest.raises(ValueError, match="already registered"):

            @register_mechanism("identity_for_test")
            class Other(Identity):
                pass
    finally:
        from attn_zoo import registry

        registry._REGISTRY.pop("identity_for_test", None)


def test_knobs_must_be_keyword_only_with_hint_and_default():
    class Bad(Mixer):
        def __init__(self, dim, num_heads, *, feat_size=None, window=3):
            super().__init__(dim, num_heads)

    with pytest.raises(TypeError, match="needs a type hint"):
        register_mechanism("bad_for_test")(Bad)


@pytest.mark.parametrize("name", ["global", "swin"])
def test_bad_tensors_name_mechanism_and_constraint(name):
    m = attn_zoo.create_mechanism(name, dim=32, num_heads=4)
    with pytest.raises(MechanismInputError, match=rf"{name}: expected tokens of shape \(B, H, W, C\)"):
        m(torch.randn(2, 64, 32))
    with pytest.raises(MechanismInputError, match=rf"{name}: expected 32 channels.*got 16"):
        m(torch.randn(2, 8, 8, 16))
    with pytest.raises(MechanismInputError, match="divisible by num_heads"):
        attn_zoo.create_mechanism(name, dim=30, num_heads=4)


def test_forced_backend_unknown_and_recorded():
    m = attn_zoo.create_mechanism("global", dim=16, num_heads=2, backend="reference")
    m(torch.randn(1, 4, 4, 16))
    assert m.last_backend == "reference"
    with pytest.raises(UnknownNameError, match="natten"):
        attn_zoo.create_mechanism("global", dim=16, num_heads=2, backend="natten")
