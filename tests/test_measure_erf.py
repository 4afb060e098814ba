"""Effective receptive field on models whose answer is known: a 3x3 conv sees 3x3, two see 5x5, global
attention sees the corners."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from attn_zoo.backbone import create_model
from attn_zoo.backbone.presets import resolve_config
from attn_zoo.measure.erf import erf_map, erf_radii, measure_erf


def conv_features(layers: int):
    torch.manual_seed(0)
    convs = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1) for i in range(layers)])
    return convs, lambda x: convs(x).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)


@pytest.mark.parametrize(("layers", "side"), [(1, 3), (2, 5)])
def test_stacked_3x3_convs_have_a_square_support_of_known_side(layers, side):
    model, features = conv_features(layers)
    grid, centre = erf_map(model, img_size=11, n_images=2, features=features)
    assert centre == (5.0, 5.0)
    half = side // 2
    support = np.zeros_like(grid, dtype=bool)
    support[5 - half : 6 + half, 5 - half : 6 + half] = True
    assert np.array_equal(grid > 0, support)  # every pixel of the side x side square, none outside
    assert grid.sum() == pytest.approx(1.0)
    r50, r90 = erf_radii(grid, centre)
    assert r50 <= r90 <= math.hypot(side // 2, side // 2)


def test_radii_of_a_point_and_of_a_ring():
    point = np.zeros((9, 9))
    point[4, 4] = 1
    assert erf_radii(point, (4.0, 4.0)) == [0.0, 0.0]
    ring = np.zeros((9, 9))
    ring[4, 4] = 0.4
    ring[4, 7] = ring[4, 1] = 0.3  # 60% within radius 3, 40% at radius 0
    r50, r90 = erf_radii(ring, (4.0, 4.0))
    assert r50 == 3.0 and r90 == 3.0


def test_global_attention_erf_reaches_the_corners(tmp_path):
    model = create_model(resolve_config("zoo_s32", dims=(12, 24, 48, 96), mixer="global", num_classes=10))
    metrics, grid = measure_erf(model, img_size=32, n_images=2, save_to=tmp_path / "erf.npy")
    assert grid.shape == (32, 32)
    assert min(grid[0, 0], grid[0, -1], grid[-1, 0], grid[-1, -1]) > 0
    assert np.count_nonzero(grid) == grid.size
    assert 0 < metrics["erf_r50"] <= metrics["erf_r90"] and 0 < metrics["erf_r90_rel"] <= 1
    assert np.load(tmp_path / "erf.npy").shape == (32, 32)


def test_model_without_forward_features_needs_a_features_function():
    with pytest.raises(TypeError, match="pass features="):
        erf_map(nn.Conv2d(3, 3, 3), img_size=8)
