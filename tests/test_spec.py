"""The typed cell spec: one builder, checked once, one plain form; the one type checker."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from attn_zoo.backbone.presets import get_preset
from attn_zoo.errors import ConfigError, KnobError
from attn_zoo.grid.suite import load_suite
from attn_zoo.measure.profile import MeasureConfig
from attn_zoo.registry import get_mechanism
from attn_zoo.train.spec import CellSpec, SpecError, build_cell_spec, cell_hash
from attn_zoo.typecheck import convert, type_name

QUICK = Path(__file__).resolve().parent.parent / "suites" / "quick.toml"


def test_a_suite_cell_reads_back_from_its_plain_form():
    for cell in load_suite(QUICK, allow_long=True).cells:
        again = CellSpec.from_dict(cell.spec.to_dict())
        assert again.to_dict() == cell.spec.to_dict() and cell_hash(again) == cell.cell_id


@pytest.mark.parametrize(
    ("kwargs", "section", "message"),
    [
        ({"measure": {"dtype": "fp8"}}, "measure", "measure.dtype = 'fp8': allowed: float32, bfloat16, float16"),
        ({"train": {}}, "data", "training needs a [data] section"),
        ({"train": {"lr": -1.0}, "data": {"source": "synthetic"}}, "train", "train: need lr > 0"),
        ({"budget": {"metric": "flops"}}, "budget", "budget metric 'flops' unknown"),
        ({"seed": -1}, "train.seed", "seeds must be non-negative integers"),
    ],
)
def test_the_builder_names_the_section(kwargs, section, message):
    with pytest.raises(SpecError) as info:
        build_cell_spec(get_preset("zoo_s32"), label="global", mixer="global", **kwargs)
    assert isinstance(info.value, ConfigError) and info.value.section == section
    assert message in str(info.value) and "\n" not in str(info.value)


def test_measure_config_is_typed():
    assert MeasureConfig.from_dict({"time_cap_s": 5}).time_cap_s == 5.0
    with pytest.raises(ConfigError, match=r"measure.time_cap_s = nan: must be a finite number"):
        MeasureConfig.from_dict({"time_cap_s": math.nan})
    with pytest.raises(ConfigError, match=r"measure.speed: unknown key"):
        MeasureConfig.from_dict({"speed": 1})


def test_one_type_checker():
    assert convert(3, float) == (True, 3.0) and convert([1, 2], tuple[int, ...]) == (True, (1, 2))
    assert not convert(True, int)[0] and not convert(math.inf, float)[0] and not convert(math.nan, float | None)[0]
    assert type_name(int | None) == "int or none" and type_name(int | None, "prose") == "an integer"
    assert type_name(tuple[int, ...], "prose") == "a list of integers"


def test_float_knobs_refuse_nan_and_inf():
    knob = next(k for k in get_mechanism("swin").knobs.values() if k.annotation in (float, float | None))
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(KnobError, match=f"knob {knob.name!r} got"):
            knob.validate(bad, "mechanism 'swin'")
