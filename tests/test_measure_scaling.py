"""Resolution scaling: exponents of exact power laws, the classification, and real counts of global vs window
attention."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from attn_zoo.backbone import create_model
from attn_zoo.backbone.presets import resolve_config
from attn_zoo.measure.counting import count_model
from attn_zoo.measure.scaling import COLUMNS, classify, exponent_table, fit_exponents, fit_power_law


def test_exact_power_law_gives_its_exponent():
    tokens = np.array([100.0, 400.0, 1600.0, 6400.0])
    fit = fit_power_law(tokens, 3 * tokens**1.5)
    assert fit["exponent"] == pytest.approx(1.5) and fit["r2"] == pytest.approx(1.0)
    assert fit["intercept"] == pytest.approx(math.log(3)) and fit["exponent_ci95"] == pytest.approx(0, abs=1e-9)
    assert (fit["n_points"], fit["tokens_min"], fit["tokens_max"]) == (4, 100.0, 6400.0)
    with pytest.raises(ValueError, match="at least two different token counts"):
        fit_power_law([100.0, 100.0], [1.0, 2.0])


def test_classification_uses_the_interval():
    assert classify(1.05, math.nan) == "linear"
    assert classify(1.3, 0.05) == "superlinear"
    assert classify(1.3, 0.4) == "linear"  # too uncertain to call
    assert classify(0.7, 0.1) == "sublinear"


def test_fit_exponents_per_label_with_fallback_to_img_size():
    sizes = [32, 64, 128]
    frame = pd.DataFrame(
        {
            "label": ["window"] * 3 + ["global"] * 3 + ["single"],
            "img_size": sizes * 2 + [32],
            "macs": [s**2 * 10 for s in sizes] + [s**4 for s in sizes] + [5.0],
            "peak_mem_fwd_mb": [1.0, 4.0, 16.0, 1.0, 16.0, float("nan"), 3.0],
        }
    )
    fits = fit_exponents(frame, ["macs", "peak_mem_fwd_mb"])
    assert list(fits.columns) == ["label", *COLUMNS]
    got = {(r.label, r.metric): (round(r.exponent, 6), r.scaling, r.n_points) for r in fits.itertuples()}
    assert got == {
        ("global", "macs"): (2.0, "superlinear", 3),
        ("global", "peak_mem_fwd_mb"): (2.0, "superlinear", 2),  # the NaN row is left out
        ("window", "macs"): (1.0, "linear", 3),
        ("window", "peak_mem_fwd_mb"): (1.0, "linear", 3),
    }  # "single" has one size: no fit
    wide = exponent_table(fits)
    assert list(wide["label"]) == ["global", "window"] and wide.loc[0, "macs"].startswith("2.00")


def test_counted_macs_of_global_attention_scale_faster_than_window_attention():
    rows = []
    for mechanism, knobs in (("global", {}), ("swin", {"window": 4})):
        for img_size in (32, 48, 64):
            config = resolve_config("zoo_s32", dims=(12, 24, 48, 96), img_size=img_size)
            model = create_model(config.replace(mixer={"name": mechanism, "knobs": knobs}))
            counts = count_model(model, img_size)
            rows.append({"label": mechanism, "tokens": (img_size // 2) ** 2, **counts})
    fits = fit_exponents(pd.DataFrame(rows), ["attention_macs"]).set_index("label")["exponent"]
    assert fits["swin"] == pytest.approx(1.0, abs=0.03)  # windows: the same work per token at every size
    assert fits["global"] > 1.5  # all pairs: quadratic in the first stages
