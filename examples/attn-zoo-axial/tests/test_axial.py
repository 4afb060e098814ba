"""Tests of axial attention: the attn_zoo conformance kit (one test per check, for both block kinds), the entry
point, and what makes it axial: a token sees its own row (or column) and nothing else."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from attn_zoo_axial.mechanism import AxialAttention

from attn_zoo.testing import CHECKS, assert_check


@pytest.mark.parametrize("check", CHECKS)
def test_conforms(check):
    assert_check(AxialAttention, check)  # the kit runs both block kinds of the pattern (row, column)


def test_entry_point_is_installed():
    points = {ep.name: ep for ep in importlib.metadata.entry_points(group="attn_zoo.mechanisms")}
    assert "axial" in points, "install the package first: pip install -e ."
    assert points["axial"].load() is AxialAttention


@pytest.mark.parametrize(("axis", "sees"), [("row", (2, slice(None))), ("column", (slice(None), 3))])
def test_a_token_reaches_exactly_its_row_or_column(axis, sees):
    mixer = AxialAttention(16, 2, axis=axis).eval()
    x = torch.randn(1, 5, 7, 16)
    y = x.clone()
    y[0, 2, 3] += 1.0
    changed = (mixer(x) - mixer(y)).abs().amax(dim=-1)[0] > 0
    expected = torch.zeros(5, 7, dtype=torch.bool)
    expected[sees] = True
    assert torch.equal(changed, expected)


def test_row_attention_equals_global_attention_on_one_row():
    """On a 1 x W map a row is the whole map: axial row attention is plain global attention there."""
    from attn_zoo import create_mechanism

    axial = AxialAttention(16, 2, axis="row").eval()
    ref = create_mechanism("global", 16, 2).eval()
    ref.load_state_dict(axial.state_dict())
    x = torch.randn(2, 1, 9, 16)
    torch.testing.assert_close(axial(x), ref(x))
