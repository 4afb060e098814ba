"""MAC counting: every mechanism's formula equals what FlopCounterMode counts (within 1%), over shapes and knobs;
custom ops, flex_attention masks and natten's ops are counted; fvcore misses fused attention.

Parametrized over ``attn_zoo.list_mechanisms()``, so a mechanism merged later is covered without editing this
file. A mechanism may list representative knob sets in a class attribute ``example_knobs`` (a tuple of
dicts); each is tried at every block position of its ``block_pattern``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import attn_zoo
from attn_zoo.backbone import create_model
from attn_zoo.backbone.config import MixerSpec
from attn_zoo.errors import AttnZooError
from attn_zoo.measure.counting import (
    NATTEN_OPS,
    analytic_attention_macs,
    count_flops,
    count_model,
    flex_kept_fraction,
    fvcore_macs,
)

# the project's mechanisms (test modules register probes without formulas; plugins have `attn-zoo check`)
MECHANISMS = sorted(n for n, s in attn_zoo.list_mechanisms().items() if s.cls.__module__.startswith("attn_zoo."))
# token maps the mixer-level check runs at: square, odd, not a multiple of common windows, rectangular
MIXER_SHAPES = ((8, 8), (14, 14), (9, 13), (16, 24))
TOLERANCE = 0.01


def knob_sets(name: str) -> list[dict]:
    cls = attn_zoo.list_mechanisms()[name].cls
    return [dict(k) for k in getattr(cls, "example_knobs", ({},))] or [{}]


def _needs_context(name: str) -> bool:
    spec = attn_zoo.list_mechanisms()[name]
    knobs = spec.resolve_knobs({})
    return spec.cls.build_context(24, 3, (8, 8), knobs) is not None


@pytest.mark.parametrize("name", MECHANISMS)
def test_mixer_formula_equals_counted_macs(name):
    """A mixer alone: ``attention_macs(H, W)`` against FlopCounterMode at several maps, knob sets and block
    positions (Swin's W-MSA and SW-MSA)."""
    if _needs_context(name):
        pytest.skip(f"{name} needs a stage context; covered by the harness test below")
    spec = attn_zoo.list_mechanisms()[name]
    checked = 0
    for knobs in knob_sets(name):
        for occurrence in range(len(spec.cls.block_pattern)):
            for shape in MIXER_SHAPES:
                try:
                    mixer = attn_zoo.create_mechanism(name, 24, 3, feat_size=shape, occurrence=occurrence, **knobs)
                    x = torch.randn(1, *shape, 24)
                    with torch.no_grad():
                        total, _, uncounted = count_flops(lambda mixer=mixer, x=x: mixer(x))
                except AttnZooError:
                    continue  # a map the mechanism does not take at these knobs (it said so clearly)
                assert not uncounted, f"{name}: ops without a FLOP formula: {uncounted}"
                counted = total / 2
                formula = mixer.attention_macs(*shape)
                assert abs(formula - counted) <= TOLERANCE * counted, (
                    f"{name} {knobs} occurrence {occurrence} at {shape}: formula {formula} vs counted {counted:.0f}"
                )
                checked += 1
    assert checked >= 2 * len(knob_sets(name)), f"{name}: fewer than two map sizes could be checked"


def tiny_config(name: str, knobs: dict, img_size: int):
    return attn_zoo.backbone.presets.resolve_config(
        "zoo_s32", dims=(24, 48, 96, 192), img_size=img_size, mixer=MixerSpec(name, knobs)
    )


@pytest.mark.parametrize("name", MECHANISMS)
def test_harness_formula_equals_counted_attention_macs(name):
    """Inside the harness: the sum of the mixers' formulas (and of stage contexts' formulas) against the
    counted attention MACs, at two input sizes; per-stage paper defaults and block patterns included."""
    checked = 0
    for knobs in knob_sets(name):
        for img_size in (32, 64):
            try:
                model = create_model(tiny_config(name, knobs, img_size))
            except AttnZooError:
                continue
            counted = count_model(model, img_size)["attention_macs"]
            formula = analytic_attention_macs(model, img_size)
            message = f"{name} {knobs} at {img_size}: formula {formula} vs counted {counted}"
            assert abs(formula - counted) <= TOLERANCE * counted, message
            checked += 1
    assert checked, f"{name}: no harness size could be built"


def test_context_formulas_count_in_the_analytic_sum():
    """A stage context's declared ``attention_macs`` enters the analytic sum, as its counted MACs enter the count."""
    model = create_model(tiny_config("global", {}, 32))

    class Context(torch.nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.proj = torch.nn.Linear(dim, dim)

        def forward(self, x):
            return self.proj(x)

        def attention_macs(self, height, width):
            return height * width * self.proj.in_features * self.proj.out_features

    before_formula = analytic_attention_macs(model, 32)
    before_counted = count_model(model, 32)["attention_macs"]
    model.stages[0].contexts["global"] = Context(24)
    added = 16 * 16 * 24 * 24  # the stage-0 map of a 32x32 input with patch 2
    assert analytic_attention_macs(model, 32) == before_formula + added
    assert count_model(model, 32)["attention_macs"] == before_counted + added


def test_custom_op_without_formula_is_reported_and_with_one_is_counted():
    @torch.library.custom_op("attn_zoo_test::square_mm", mutates_args=())
    def square_mm(x: torch.Tensor) -> torch.Tensor:
        return x @ x

    x = torch.randn(8, 8)
    with pytest.warns(RuntimeWarning, match="no formula for \\['attn_zoo_test.square_mm'\\]"):
        total, _, uncounted = count_flops(lambda: square_mm(x))
    assert total == 0 and uncounted == ["attn_zoo_test.square_mm"]

    @torch.library.custom_op("attn_zoo_test::square_mm2", mutates_args=())
    def square_mm2(x: torch.Tensor) -> torch.Tensor:
        return x @ x

    @torch.utils.flop_counter.register_flop_formula(torch.ops.attn_zoo_test.square_mm2)
    def _(x_shape, out_shape=None, **kwargs):
        return 2 * x_shape[0] * x_shape[1] * x_shape[1]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        total, _, uncounted = count_flops(lambda: square_mm2(x))
    assert total == 2 * 8**3 and uncounted == []


def banded(b, h, q, kv):
    return (q - kv).abs() <= 2


def test_flex_attention_counts_only_the_pairs_its_mask_keeps():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n, d, heads = 64, 16, 2
    q = torch.randn(1, heads, n, d)
    block_mask = create_block_mask(banded, None, None, n, n, device="cpu")
    total, _, _ = count_flops(lambda: flex_attention(q, q, q, block_mask=block_mask))
    kept_pairs = n * 5 - 2 * (2 + 1)  # a band of half-width 2, cut at both ends
    assert total == 2 * heads * kept_pairs * (d + d)
    assert flex_kept_fraction(block_mask.as_tuple(), 1, heads, torch.device("cpu")) == kept_pairs / n**2
    dense, _, _ = count_flops(lambda: flex_attention(q, q, q))
    assert dense == 2 * heads * n * n * (d + d)


def test_flex_masks_too_large_to_enumerate_count_the_computed_blocks(monkeypatch):
    from torch.nn.attention.flex_attention import create_block_mask

    import attn_zoo.measure.counting as counting

    n = 512
    block_mask = create_block_mask(banded, None, None, n, n, device="cpu")  # 128-blocks: the diagonal band
    exact = flex_kept_fraction(block_mask.as_tuple(), 1, 1, torch.device("cpu"))
    monkeypatch.setattr(counting, "FLEX_EXACT_MAX_PAIRS", 0)
    blocks = flex_kept_fraction(block_mask.as_tuple(), 1, 1, torch.device("cpu"))
    computed = (4 + 2 * 3) * 128 * 128  # 4 diagonal and 6 off-diagonal 128x128 blocks hold band pairs
    assert exact < blocks == computed / n**2


def test_natten_formulas_from_tensor_shapes():
    """natten's fused ops (CUDA builds only) get prod(kernel) keys per query, whatever the tensor layout."""
    q = torch.empty(2, 8, 8, 3, 16)  # (B, H, W, heads, d)
    v = torch.empty(2, 8, 8, 3, 32)
    forward = NATTEN_OPS["na2d_forward"](q, q, v, [3, 5])
    assert forward == 2 * (2 * 64 * 3) * 15 * (16 + 32)
    assert NATTEN_OPS["hopper_na2d_backward"](q, q, v, None, None, None, [3, 5]) == 2 * forward
    fq = torch.empty(2, 100, 3, 16)  # fmha: (B, S, heads, d)
    assert NATTEN_OPS["fmha_forward"](fq, fq, fq) == 2 * (2 * 100 * 3) * 100 * 32


def test_natten_on_cpu_counts_neighbourhoods_not_all_pairs():
    natten = pytest.importorskip("natten")
    q = torch.randn(1, 12, 12, 2, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total, _, uncounted = count_flops(lambda: natten.na2d(q, q, q, kernel_size=5))
    assert uncounted == []
    assert total == 2 * (144 * 2) * 25 * 32  # every query has 25 neighbours (natten's windows shift inward)


def test_fvcore_misses_fused_attention_and_agrees_without_it():
    """fvcore's number: close to ours with written-out attention, short of it by the attention matmuls with SDPA."""
    pytest.importorskip("fvcore")
    model = create_model(tiny_config("global", {}, 32))
    counts = count_model(model, 32)
    for m in model.mixers():
        m.set_backend("reference")
    reference_fv = fvcore_macs(model, 32)
    assert abs(reference_fv / counts["macs"] - 1) < 0.05  # fvcore also counts norms and GELU; ours does not
    for m in model.mixers():
        m.set_backend("sdpa")
    sdpa_fv = fvcore_macs(model, 32)
    attention_matmuls = sum(2 * (h * w) ** 2 * c for h, w, c in ((16, 16, 24), (8, 8, 48), (4, 4, 96), (2, 2, 192))) * 2
    assert math.isclose(reference_fv - sdpa_fv, attention_matmuls, rel_tol=1e-6)
