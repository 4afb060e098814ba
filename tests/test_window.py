"""The one window path (``layers.window.Windows``): partition/merge round trips at odd sizes, the shift and
padding masks against a direct construction, and Swin, IWSA and GC-ViT against plain window code written
out here (pad, roll, view/permute partition, attention, reverse, roll back, crop), equal in float64."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from attn_zoo.layers.attention import attention_reference
from attn_zoo.layers.window import Windows
from attn_zoo.mechanisms.gcvit import GCViTAttention
from attn_zoo.mechanisms.iwsa import InteractiveWindowAttention
from attn_zoo.mechanisms.swin import SwinAttention

SIZES = [(1, 1), (3, 5), (4, 4), (7, 7), (9, 13), (13, 11), (6, 17)]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


# -- plain window code, written out (the official codes' steps, one copy each) ------------------------------
def plain_pad(x, window):
    H, W = x.shape[1:3]
    return F.pad(x, (0, 0, 0, -W % window[1], 0, -H % window[0]))


def plain_partition(x, window):
    """``(B, Hp, Wp, C) -> (B, nW, N, C)``."""
    B, Hp, Wp, C = x.shape
    Mh, Mw = window
    x = x.view(B, Hp // Mh, Mh, Wp // Mw, Mw, C).permute(0, 1, 3, 2, 4, 5).contiguous()
    return x.view(B, -1, Mh * Mw, C)


def plain_reverse(windows, window, Hp, Wp):
    B, _, _, C = windows.shape
    Mh, Mw = window
    x = windows.view(B, Hp // Mh, Wp // Mw, Mh, Mw, C).permute(0, 1, 3, 2, 4, 5).contiguous()
    return x.view(B, Hp, Wp, C)


def plain_windows(x, window, shift):
    """Pad, roll by -shift, partition: ``(B, H, W, C) -> (B, nW, N, C)``."""
    x = plain_pad(x, window)
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
    return plain_partition(x, window)


def plain_back(windows, window, shift, H, W):
    """Reverse, roll by +shift, crop: ``(B, nW, N, C) -> (B, H, W, C)``."""
    Hp, Wp = -(-H // window[0]) * window[0], -(-W // window[1]) * window[1]
    x = plain_reverse(windows, window, Hp, Wp)
    if shift:
        x = torch.roll(x, (shift, shift), (1, 2))
    return x[:, :H, :W]


def direct_mask(H, W, window, shift, shift_value, pad_value):
    """``(nW, N, N)`` built token by token: in the rolled padded map, a pair is masked when exactly one of the
    two tokens wrapped around along an axis (they come from distant image regions); a padded key is masked."""
    Mh, Mw = window
    Hp, Wp = -(-H // Mh) * Mh, -(-W // Mw) * Mw
    nH, nWw, N = Hp // Mh, Wp // Mw, Mh * Mw
    mask = torch.zeros(nH * nWw, N, N)
    for wi, wj in itertools.product(range(nH), range(nWw)):
        rows = [(wi * Mh + n // Mw, wj * Mw + n % Mw) for n in range(N)]  # rolled-map coordinates
        for i, j in itertools.product(range(N), range(N)):
            (ri, ci), (rj, cj) = rows[i], rows[j]
            value = 0.0
            if shift and ((ri >= Hp - shift) != (rj >= Hp - shift) or (ci >= Wp - shift) != (cj >= Wp - shift)):
                value = shift_value
            src_r, src_c = (rj + shift) % Hp, (cj + shift) % Wp  # the key's place in the padded map
            if pad_value is not None and (src_r >= H or src_c >= W):
                value = pad_value
            mask[wi * nWw + wj, i, j] = value
    return mask


# -- the plan ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("window,shift", [((4, 4), 0), ((4, 4), 2), ((3, 5), 0), ((3, 5), 1), ((1, 1), 0)])
def test_partition_and_merge_round_trip(size, window, shift):
    H, W = size
    heads, d = 3, 2
    x = torch.randn(2, H, W, heads * d)
    plan = Windows(window, heads, shift=shift).plan(H, W, CPU)
    windows = plan.partition(x)
    Hp, Wp = plan.padded_size
    assert windows.shape == (2, plan.num_windows, plan.tokens, heads * d)
    assert plan.num_windows * plan.tokens == Hp * Wp and Hp % window[0] == 0 and Wp % window[1] == 0
    assert torch.equal(windows, plain_windows(x, window, shift))
    assert torch.equal(plan.partition(plan.pad(x)), windows)  # an already padded map is taken as is
    assert torch.equal(plan.reverse(windows), x)
    heads_first = plan.split_heads(windows, 1)[0]  # (B, nW, heads, N, d)
    assert heads_first.shape == (2, plan.num_windows, heads, plan.tokens, d)
    assert torch.equal(plan.merge(heads_first), x)
    assert torch.equal(plan.reverse(plan.merge_heads(heads_first)), x)


@pytest.mark.parametrize("shift", [0, 2])
def test_partition_gradient_is_the_plain_one(shift):
    x = torch.randn(2, 9, 13, 4, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    g = torch.randn(2, 12, 16, 4)  # over the padded map, as windows
    plan = Windows(4, 2, shift=shift).plan(9, 13, CPU)
    windows = plain_partition(g, (4, 4))
    (plan.partition(x) * windows).sum().backward()
    (plain_windows(y, (4, 4), shift) * windows).sum().backward()
    assert torch.equal(x.grad, y.grad)


def test_split_heads_takes_q_k_v_apart():
    plan = Windows(2, 2).plan(4, 4, CPU)
    t = torch.randn(1, 4, 4, 3 * 2 * 5)
    q, k, _v = plan.split_heads(t, 3)
    assert q.shape == (1, 4, 2, 4, 5)
    assert torch.equal(k[0, 1, 1, 2], t[0, 1, 2, 10 + 5 : 10 + 10])


@pytest.mark.parametrize("size", [(8, 8), (9, 13), (5, 7), (12, 6)])
@pytest.mark.parametrize("window,shift", [((4, 4), 2), ((4, 4), 1), ((3, 5), 1), ((4, 4), 0)])
@pytest.mark.parametrize("pad_value", [None, -100.0, float("-inf")])
def test_masks_equal_a_direct_construction(size, window, shift, pad_value):
    H, W = size
    plan = Windows(window, 2, shift=shift, shift_mask_value=-100.0, pad_mask_value=pad_value).plan(H, W, CPU)
    expected = direct_mask(H, W, window, shift, -100.0, pad_value)
    if not expected.any():
        assert plan.mask is None
        return
    assert plan.mask.dtype == torch.float32
    got = plan.mask.expand(-1, 1, plan.tokens, plan.tokens)[:, 0]
    assert torch.equal(got.double(), expected)
    assert plan.mask.shape == ((plan.num_windows, 1, 1, plan.tokens) if not shift else expected[:, None].shape)


def test_plans_are_cached_per_size_window_and_device():
    windows = Windows(4, 2, shift=2)
    assert windows.plan(9, 13, CPU) is windows.plan(9, 13, CPU)
    assert windows.plan(9, 13, CPU) is not windows.plan(9, 12, CPU)
    assert windows.plan(9, 13, CPU, window=(3, 3)).window == (3, 3)


# -- the mechanisms, against plain code ---------------------------------------------------------------------
def heads_of(t, parts, heads):
    B, nW, N, C = t.shape
    return t.view(B, nW, N, parts, heads, C // (parts * heads)).permute(3, 0, 1, 4, 2, 5)


def merge_of(out):
    B, nW, heads, N, d = out.shape
    return out.transpose(2, 3).reshape(B, nW, N, heads * d)


def plain_swin(m, x, context=None):
    """The official Swin steps: pad, roll, partition, qkv, bias + mask, attention, merge, reverse, roll, crop, proj."""
    _B, H, W, _C = x.shape
    window, s = m.window, m.shift_size
    qkv = heads_of(m.qkv(plain_windows(x, window, s)), 3, m.num_heads)
    bias = m.rel_pos().unsqueeze(0)
    pad_value = m.mask_value if m.mask_padding else None
    mask = direct_mask(H, W, window, s, m.mask_value, pad_value)
    if s or (pad_value is not None and mask.any()):
        bias = bias + mask.unsqueeze(1)
    out = attention_reference(*qkv.unbind(0), scale=m.scale, bias=bias)
    return m.proj(plain_back(merge_of(out), window, s, H, W))


def plain_iwsa(m, x, context=None):
    _B, H, W, C = x.shape
    win = m.window_for(H, W)
    qkv = plain_pad(m.qkv(x), win) if m.mask_padding else m.qkv(plain_pad(x, win))
    q, k, v = heads_of(plain_partition(qkv, win), 3, m.num_heads)
    mask = direct_mask(H, W, win, 0, 0.0, float("-inf") if m.mask_padding else None)
    bias = mask[:, None, :1] if mask.any() else None
    out = plain_back(merge_of(attention_reference(q, k, v, scale=m.scale, bias=bias)), win, 0, H, W)
    if m.lim is not None:
        out = out + m.lim(qkv[:, :H, :W, 2 * C :].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return m.proj(out)


def plain_gcvit(m, x, context):
    B, H, W, _C = x.shape
    windows = plain_windows(x, m.window, 0)
    nW, N = windows.shape[1:3]
    if context is None:
        q, k, v = heads_of(m.qkv(windows), 3, m.num_heads)
    else:
        k, v = heads_of(m.qkv(windows), 2, m.num_heads)
        q = context.reshape(B, N, m.num_heads, -1).transpose(1, 2).unsqueeze(1).expand(-1, nW, -1, -1, -1)
    out = attention_reference(q, k, v, scale=m.scale, bias=m.rel_pos().unsqueeze(0))
    return plain_back(m.proj(merge_of(out)), m.window, 0, H, W)


def _check(mechanism, reference, x, context=None):
    mechanism.set_backend("reference")
    assert isinstance(mechanism.windows, Windows)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = mechanism(x1, context=context)
    expected = reference(mechanism, x2, context)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x1, g)
    (gx_ref,) = torch.autograd.grad(expected, x2, g)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(8, 8), (9, 13), (5, 11), (3, 3)])
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("mask_padding", [False, True])
def test_swin_equals_plain_window_code(size, shift, mask_padding):
    m = SwinAttention(12, 3, window=4, shift=shift, mask_padding=mask_padding, clamp_window=False)
    _check(m, plain_swin, torch.randn(2, *size, 12))


@pytest.mark.parametrize("size", [(8, 8), (9, 13), (5, 11), (3, 3)])
@pytest.mark.parametrize("mask_padding", [False, True])
@pytest.mark.parametrize("lim", [False, True])
def test_iwsa_equals_plain_window_code(size, mask_padding, lim):
    m = InteractiveWindowAttention(12, 3, window=4, mask_padding=mask_padding, lim=lim)
    _check(m, plain_iwsa, torch.randn(2, *size, 12))


@pytest.mark.parametrize("size", [(8, 8), (9, 13), (5, 11)])
@pytest.mark.parametrize("global_query", [False, True])
def test_gcvit_equals_plain_window_code(size, global_query):
    m = GCViTAttention(12, 3, window=4, global_query=global_query, clamp_window=False)
    context = torch.randn(2, 4, 4, 12) if global_query else None
    _check(m, plain_gcvit, torch.randn(2, *size, 12), context)
