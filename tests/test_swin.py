"""Swin W-MSA / SW-MSA: equality with timm's Swin-T, shapes at many sizes, the mask, and the published counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attn_zoo
from attn_zoo.backbone import create_model
from attn_zoo.backbone.timm_weights import swin_from_timm
from attn_zoo.layers.window import (
    gather_rows,
    merge_heads_reverse,
    pad_to_multiple,
    window_partition,
    window_reverse,
    window_token_order,
)
from attn_zoo.measure.counting import analytic_attention_macs, count_model

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def swin_pair():
    torch.manual_seed(0)
    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    ours = create_model("swin_t").eval()
    ours.load_state_dict(swin_from_timm(reference.state_dict()), strict=True)
    return reference, ours


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_swin_t_equals_timm_with_mapped_weights(swin_pair, backend):
    reference, ours = swin_pair
    for m in ours.mixers():
        m.set_backend(backend)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (reference(x) - ours(x)).abs().max().item()
    assert diff < 1e-4


def test_swin_t_published_counts():
    counts = count_model(create_model("swin_t"), 224)
    assert abs(counts["params"] / 28.29e6 - 1) < 0.01
    assert abs(counts["macs"] / 4.5e9 - 1) < 0.01
    assert counts["flops"] == 2 * counts["macs"]
    assert 0 < counts["attention_macs"] < counts["macs"]


def test_attention_macs_formula_matches_counter():
    model = create_model("swin_t")
    counted = count_model(model, 224)["attention_macs"]
    assert analytic_attention_macs(model, 224) == counted


def naive_window_attention(m, x):
    """Window attention written from the formulas, one window at a time (no shift)."""
    B, H, W, C = x.shape
    M, h, d = m.window[0], m.num_heads, m.head_dim
    out = torch.zeros_like(x)
    bias = m.rel_pos()
    for b in range(B):
        for wi in range(H // M):
            for wj in range(W // M):
                tokens = x[b, wi * M : (wi + 1) * M, wj * M : (wj + 1) * M].reshape(M * M, C)
                q, k, v = m.qkv(tokens).reshape(M * M, 3, h, d).permute(1, 2, 0, 3)
                attn = torch.softmax(q @ k.transpose(-1, -2) * d**-0.5 + bias, dim=-1)
                y = (attn @ v).transpose(0, 1).reshape(M * M, C)
                out[b, wi * M : (wi + 1) * M, wj * M : (wj + 1) * M] = m.proj(y).reshape(M, M, C)
    return out


def test_wmsa_equals_naive_reference():
    m = attn_zoo.create_mechanism("swin", dim=16, num_heads=2, window=4, backend="reference").double()
    x = torch.randn(2, 8, 12, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), naive_window_attention(m, x))


def test_sw_msa_equals_rolled_naive_with_region_mask():
    torch.manual_seed(1)
    m = attn_zoo.create_mechanism("swin", dim=8, num_heads=2, window=4, shift=True).double()
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    s = 2
    rolled = torch.roll(x, (-s, -s), (1, 2))
    # region labels on the rolled map: which of the 3x3 cut regions a token came from
    idx = torch.arange(8)
    region = lambda i: 0 if i < 4 else (1 if i < 6 else 2)  # noqa: E731
    labels = torch.tensor([[region(i) * 3 + region(j) for j in idx] for i in idx])
    out = torch.zeros_like(x)
    bias = m.rel_pos()
    for wi in range(2):
        for wj in range(2):
            sl = (slice(wi * 4, wi * 4 + 4), slice(wj * 4, wj * 4 + 4))
            tokens = rolled[0][sl].reshape(16, 8)
            lab = labels[sl].reshape(16)
            mask = (lab[:, None] != lab[None, :]).double() * -100.0
            q, k, v = m.qkv(tokens).reshape(16, 3, 2, 4).permute(1, 2, 0, 3)
            attn = torch.softmax(q @ k.transpose(-1, -2) * 0.5 + bias + mask, dim=-1)
            out[0][sl] = m.proj((attn @ v).transpose(0, 1).reshape(16, 8)).reshape(4, 4, 8)
    torch.testing.assert_close(m(x), torch.roll(out, (s, s), (1, 2)))


@pytest.mark.parametrize("size", [(7, 7), (8, 8), (9, 13), (14, 14), (5, 20), (1, 1), (3, 2)])
@pytest.mark.parametrize("shift", [False, True])
def test_any_size_pads_and_crops(size, shift):
    m = attn_zoo.create_mechanism("swin", dim=12, num_heads=3, window=7, shift=shift)
    x = torch.randn(2, *size, 12)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_padding_follows_official_zero_pad_then_crop():
    m = attn_zoo.create_mechanism("swin", dim=8, num_heads=2, window=4, backend="reference").double()
    x = torch.randn(1, 6, 5, 8, dtype=torch.float64)
    padded = F.pad(x, (0, 0, 0, 3, 0, 2))  # zero tokens on the bottom/right, taking part in attention
    torch.testing.assert_close(m(x), m(padded)[:, :6, :5])


def test_mask_padding_variant_ignores_padded_keys():
    m = attn_zoo.create_mechanism("swin", dim=8, num_heads=2, window=4, mask_padding=True).double()
    x = torch.randn(1, 3, 3, 8, dtype=torch.float64)
    y = m(x)
    # one 4x4 window holds the 3x3 map: with padded keys masked it equals attention over the 9 real tokens
    m2 = attn_zoo.create_mechanism("swin", dim=8, num_heads=2, window=3).double()
    m2.load_state_dict({**m.state_dict(), "rel_pos.relative_position_bias_table": torch.zeros(25, 2)})
    with torch.no_grad():
        m.rel_pos.relative_position_bias_table.zero_()
    torch.testing.assert_close(m(x), m2(x), atol=1e-8, rtol=1e-6)
    assert y.shape == x.shape


def test_window_clamps_to_small_stage_map():
    m = attn_zoo.create_mechanism("swin", dim=8, num_heads=2, window=7, shift=True, feat_size=(5, 5))
    assert m.window == (5, 5) and m.shift_size == 0
    m = attn_zoo.create_mechanism(
        "swin", dim=8, num_heads=2, window=7, shift=True, feat_size=(5, 5), clamp_window=False
    )
    assert m.window == (7, 7) and m.shift_size == 3


@pytest.mark.parametrize("img", [224, 160, 100, 64])
def test_swin_t_runs_at_several_resolutions(img):
    model = create_model("swin_t", img_size=img, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, img, img)).shape == (1, 10)


def test_batch_independence_and_gradients():
    m = attn_zoo.create_mechanism("swin", dim=16, num_heads=2, window=4, shift=True)
    x = torch.randn(3, 8, 8, 16, requires_grad=True)
    y = m(x)
    torch.testing.assert_close(y[1:2], m(x[1:2].detach()))
    y.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize("size", [(8, 8), (6, 9), (3, 2), (9, 13)])
@pytest.mark.parametrize("shift", [0, 2])
def test_token_order_is_pad_roll_partition_and_its_inverse(size, shift):
    """The two gathers Swin uses equal the official pad -> roll -> partition and reverse -> roll -> crop."""
    H, W = size
    B, heads, d, window = 2, 3, 2, (4, 4)
    into, into_inverse, back, back_inverse = window_token_order(H, W, window, shift, heads, torch.device("cpu"))
    x = torch.randn(B, H, W, heads * d)
    padded = pad_to_multiple(x, window)
    Hp, Wp = padded.shape[1:3]
    literal = window_partition(torch.roll(padded, (-shift, -shift), (1, 2)), window)  # (B, nW, N, C)
    nW, N = literal.shape[1:3]
    flat = padded.reshape(B, Hp * Wp, -1).requires_grad_()
    windows = gather_rows(flat, into, into_inverse)
    torch.testing.assert_close(windows, literal.reshape(B, nW * N, -1))
    (grad_in,) = torch.autograd.grad((windows * torch.arange(windows.numel()).view_as(windows)).sum(), flat)
    torch.testing.assert_close(gather_rows(grad_in, into), torch.arange(windows.numel()).view_as(windows).float())
    out = torch.randn(B, nW, heads, N, d, requires_grad=True)  # an attention output
    merged = out.transpose(2, 3).reshape(B, nW, N, heads * d)
    expected = torch.roll(window_reverse(merged, window, Hp, Wp), (shift, shift), (1, 2))[:, :H, :W]
    got = gather_rows(out.reshape(B, nW * heads * N, d), back, back_inverse).view(B, H, W, heads * d)
    torch.testing.assert_close(got, expected)
    assert (back_inverse is None) == ((Hp, Wp) != (H, W))  # a permutation only when nothing is cropped
    if not shift:
        torch.testing.assert_close(merge_heads_reverse(out, window, Hp, Wp)[:, :H, :W], expected)
    (grad,) = torch.autograd.grad((got * torch.arange(got.numel()).view_as(got)).sum(), out)
    (grad_literal,) = torch.autograd.grad((expected * torch.arange(got.numel()).view_as(got)).sum(), out)
    torch.testing.assert_close(grad, grad_literal)  # padded positions get zero gradient on both
