"""Bad tensors into any mechanism (issue 10, item 8): wrong rank, wrong channels, channels not divisible by the
heads, maps too small, not a tensor. Each gives one MechanismInputError naming the mechanism and the
constraint. Parametrized over every registered mechanism, so a new one is held to the same contract."""

from __future__ import annotations

import pytest
import torch

from attn_zoo.errors import MechanismInputError
from attn_zoo.registry import create_mechanism, list_mechanisms

DIM, HEADS = 24, 3  # heads a multiple of 3: MSDA splits them into three dilation groups
MECHANISMS = sorted(list_mechanisms())


def build(name: str):
    return create_mechanism(name, DIM, HEADS, feat_size=(8, 8)).eval()


def forward(mixer, x):
    context_module = type(mixer).build_context(DIM, HEADS, (8, 8), {})
    context = context_module(torch.randn(1, 8, 8, DIM)) if context_module is not None else None
    with torch.no_grad():
        return mixer(x, context)


@pytest.mark.parametrize("name", MECHANISMS)
@pytest.mark.parametrize(
    ("shape", "constraint"),
    [
        ((2, 64, DIM), "(B, H, W, C)"),  # tokens flattened: rank 3
        ((2, 8, 8, DIM, 1), "(B, H, W, C)"),  # rank 5
        ((2, 8, 8, DIM + 8), "channels"),  # wrong channel count
        ((1, 0, 8, DIM), "at least"),  # an empty map
    ],
    ids=["rank3", "rank5", "channels", "empty"],
)
def test_bad_shapes_name_the_mechanism_and_the_constraint(name, shape, constraint):
    mixer = build(name)
    with pytest.raises(MechanismInputError) as info:
        forward(mixer, torch.randn(*shape))
    text = str(info.value)
    assert text.startswith(f"{name}: ") and constraint in text and "\n" not in text, text


@pytest.mark.parametrize("name", MECHANISMS)
def test_channels_not_divisible_by_heads(name):
    with pytest.raises(MechanismInputError) as info:
        create_mechanism(name, DIM + 1, HEADS, feat_size=(8, 8))
    text = str(info.value)
    assert text.startswith(f"{name}: ") and "divisible by num_heads" in text and f"({DIM + 1})" in text


@pytest.mark.parametrize("name", MECHANISMS)
def test_not_a_tensor(name):
    with pytest.raises(MechanismInputError, match=rf"^{name}: expected tokens of shape \(B, H, W, C\), got list"):
        forward(build(name), [[1.0, 2.0]])


@pytest.mark.parametrize("name", MECHANISMS)
def test_a_good_tensor_passes_so_the_errors_above_are_about_the_input(name):
    out = forward(build(name), torch.randn(2, 8, 8, DIM))
    assert out.shape == (2, 8, 8, DIM) and torch.isfinite(out).all()
