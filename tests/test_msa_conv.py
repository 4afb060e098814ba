"""TiC's MSA-Conv: equality with references written from the formulas (loops over positions, float64), the
official operator's semantics as a special case, the cyclic shift and inter-pooling by explicit index
arithmetic, properties, backends, MAC formulas, the ``tic`` preset and arbitrary resolution.

The comparison with the official ``MSA_Conv_2d`` itself (its extension transcribed in Python) was run by hand;
docs/mechanisms/tic.md has the script and the numbers. These tests do not need the official code.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import attn_zoo
from attn_zoo.backbone import create_model
from attn_zoo.errors import KnobError, MechanismInputError
from attn_zoo.layers.neighborhood import _natten_import_error
from attn_zoo.measure.counting import count_model
from attn_zoo.mechanisms.msa_conv import DIRECTIONS


def randomise(m: nn.Module) -> nn.Module:
    """Random values in every parameter (biases too), so no term vanishes by initialisation."""
    with torch.no_grad():
        for p in m.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 4
            p.copy_(torch.randn_like(p) * fan_in**-0.5)
    return m


def make(dim: int, heads: int, dtype=torch.float64, backend="reference", **knobs) -> nn.Module:
    return randomise(attn_zoo.create_mechanism("msa_conv", dim, heads, backend=backend, **knobs)).to(dtype)


# -- references written from the formulas ---------------------------------------------------------------------
def inward_index(x: int, n: int, k: int, d: int, a: int) -> int:
    """natten's inward window along one axis: the window centre clamped inside x's dilation sub-grid."""
    r, g = (k - 1) // 2, x % d
    n_g = -(-(n - g) // d)
    centre = min(max(x // d, r), n_g - 1 - r)
    return (centre + a - r) * d + g


def naive_local_attention(q, k, v, kernel, dil, scale, border) -> torch.Tensor:
    """One head, ``(B, H, W, d)`` each: a Python loop over queries and their neighbours."""
    B, H, W, d = q.shape
    (kh, kw), (dh, dw) = kernel, dil
    out = torch.zeros_like(q)
    for i in range(H):
        for j in range(W):
            logits, values = [], []
            for a in range(kh):
                for b in range(kw):
                    if border == "inward":
                        ni, nj = inward_index(i, H, kh, dh, a), inward_index(j, W, kw, dw, b)
                    else:
                        ni, nj = i + (a - (kh - 1) // 2) * dh, j + (b - (kw - 1) // 2) * dw
                    if 0 <= ni < H and 0 <= nj < W:
                        logits.append(scale * (q[:, i, j] * k[:, ni, nj]).sum(-1))
                        values.append(v[:, ni, nj])
                    elif border == "zero":  # a zero key (logit 0) and a zero value, still in the softmax
                        logits.append(torch.zeros(B, dtype=q.dtype))
                        values.append(torch.zeros(B, d, dtype=q.dtype))
            weights = torch.exp(torch.stack(logits, -1))
            weights = weights / weights.sum(-1, keepdim=True)
            out[:, i, j] = (weights.unsqueeze(-1) * torch.stack(values, 1)).sum(1)
    return out


def naive_conv(conv: nn.Conv2d, y: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)``: the sum over kernel taps of the zero-padded, shifted map times the tap's weights."""
    _, H, W, C = y.shape
    ph, pw = conv.padding
    padded = F.pad(y, (0, 0, pw, pw, ph, ph))
    out = torch.zeros_like(y) + (conv.bias if conv.bias is not None else 0)
    for a in range(conv.kernel_size[0]):
        for b in range(conv.kernel_size[1]):
            r, c = a * conv.dilation[0], b * conv.dilation[1]
            tap = padded[:, r : r + H, c : c + W]
            w = conv.weight[:, :, a, b]  # (C, C / groups)
            out = out + (tap * w[:, 0] if conv.groups == C else tap @ w.T)
    return out


def naive_pool(pool: nn.Conv2d, kv: torch.Tensor, f: int) -> torch.Tensor:
    """Inter-pooling's k/v conv: ``(B, Hp, Wp, 2C) -> (B, Hp/f, Wp/f, 2C)``, a sum over each f x f cell."""
    B, Hp, Wp, C2 = kv.shape
    out = torch.zeros(B, Hp // f, Wp // f, C2, dtype=kv.dtype)
    for i in range(Hp // f):
        for j in range(Wp // f):
            cell = kv[:, i * f : (i + 1) * f, j * f : (j + 1) * f]  # (B, f, f, 2C)
            if pool.groups == C2:  # depthwise
                out[:, i, j] = (cell * pool.weight[:, 0].permute(1, 2, 0)).sum((1, 2)) + pool.bias
            else:  # groups = 2: a dense conv for k and one for v
                half = C2 // 2
                for g in range(2):
                    w = pool.weight[g * half : (g + 1) * half]  # (C, C, f, f)
                    x = cell[..., g * half : (g + 1) * half]
                    out[:, i, j, g * half : (g + 1) * half] = torch.einsum("bxyc,ocxy->bo", x, w)
                out[:, i, j] += pool.bias
    return out


def roll_heads(t: torch.Tensor, heads: int, s: int) -> torch.Tensor:
    """``(B, H, W, C)``: head i's channels rolled by ``s * DIRECTIONS[i % 4]`` with torch.roll."""
    d = t.shape[-1] // heads
    parts = [torch.roll(t[..., i * d : (i + 1) * d], (s * DIRECTIONS[i % 4][0], s * DIRECTIONS[i % 4][1]), (1, 2))
             for i in range(heads)]  # fmt: skip
    return torch.cat(parts, -1)


def naive_msa_conv(m, x: torch.Tensor) -> torch.Tensor:
    """MSA-Conv from the formulas: qkv, (shift), (inter-pooling), per-head local attention, residual, conv, act."""
    B, H, W, C = x.shape
    h, d, f, s = m.num_heads, m.head_dim, m.inter_pool, m.shift
    qkv = x @ m.qkv.weight.T + (m.qkv.bias if m.qkv.bias is not None else 0)
    q, k, v = qkv.split(C, -1)
    if s:
        k, v = roll_heads(k, h, s), roll_heads(v, h, s)
        q = roll_heads(q, h, s) if m.shift_mode == "map" else q
    Hq, Wq = H, W
    if f > 1:
        Hq, Wq = math.ceil(H / f), math.ceil(W / f)
        q, k, v = (F.pad(t, (0, 0, 0, Wq * f - W, 0, Hq * f - H)) for t in (q, k, v))
        pooled = naive_pool(m.pool, torch.cat([k, v], -1), f)
        k, v = pooled[..., :C], pooled[..., C:]
    out = torch.zeros(B, Hq * f, Wq * f, C, dtype=x.dtype)
    for i in range(h):
        c = slice(i * d, (i + 1) * d)
        for a in range(f):
            for b in range(f):  # sub-image (a, b): the queries at rows a::f, columns b::f
                sub = naive_local_attention(
                    q[:, a::f, b::f, c], k[..., c], v[..., c], m.kernel, m.dil, m.scale, m.border
                )
                out[:, a::f, b::f, c] = sub
    out = out[:, :H, :W]
    if s and m.shift_mode == "map":
        out = roll_heads(out, h, -s)
    if m.residual:
        out = out + x
    out = naive_conv(m.conv, out)
    if isinstance(m.act, nn.ReLU):
        return out.clamp_min(0)
    if isinstance(m.act, nn.GELU):
        return 0.5 * out * (1 + torch.erf(out / math.sqrt(2)))
    return out


CASES = [
    # (dim, heads, size, knobs)
    pytest.param(8, 2, (6, 7), {}, id="standard"),
    pytest.param(8, 2, (7, 6), {"dilation": 2, "conv": "dilated"}, id="dilated"),
    pytest.param(8, 2, (6, 5), {"kernel": (5, 1), "conv": "depthwise", "qk_scale": "head_dim"}, id="dw-5x1"),
    pytest.param(8, 1, (5, 8), {"kernel": (1, 5), "dilation": (1, 2), "border": "masked"}, id="1x5-masked"),
    pytest.param(8, 2, (7, 7), {"border": "inward", "activation": "none"}, id="inward"),
    pytest.param(8, 4, (6, 7), {"shift": 1}, id="shift-map"),
    pytest.param(12, 3, (5, 6), {"shift": 2, "shift_mode": "kv", "conv": "depthwise"}, id="shift-kv"),
    pytest.param(8, 2, (7, 9), {"inter_pool": 2}, id="pool2-padded"),
    pytest.param(8, 4, (8, 7), {"inter_pool": 3, "pool_conv": "full", "shift": 1}, id="pool3-full-shift"),
    pytest.param(
        8,
        2,
        (5, 6),
        {"residual": False, "conv_bias": True, "qkv_bias": False, "activation": "gelu"},
        id="clean-knobs",
    ),
]


@pytest.mark.parametrize("backend", ["reference", "cpu_fast"])
@pytest.mark.parametrize(("dim", "heads", "size", "knobs"), CASES)
def test_equals_naive_reference(dim, heads, size, knobs, backend):
    m = make(dim, heads, backend=backend, **knobs)
    x = torch.randn(2, *size, dim, dtype=torch.float64)
    torch.testing.assert_close(m(x), naive_msa_conv(m, x), atol=1e-10, rtol=1e-10)
    assert m.last_backend == backend


def test_official_operator_is_the_single_head_case():
    """The official forward in its own layout (B, C, H, W), written as its validation.py does with unfold:
    logits (B, k*k, H, W) * C^-0.5, softmax over dim 1, sum with unfolded v, ``out += x``, conv with
    ``padding``, ``nn.ReLU(inplace=True)(out)`` whose return value is discarded."""
    C, H, W, kernel, dil = 12, 6, 7, (3, 3), 2
    m = make(C, 1, dilation=dil, qk_scale="official")
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    q, k, v = F.conv2d(x, m.qkv.weight[:, :, None, None], m.qkv.bias).chunk(3, dim=1)
    pad = (dil * (kernel[0] - 1) // 2, dil * (kernel[1] - 1) // 2)
    k_cols = F.unfold(k, kernel, dilation=dil, padding=pad).reshape(2, C, 9, H, W)
    v_cols = F.unfold(v, kernel, dilation=dil, padding=pad).reshape(2, C, 9, H, W)
    dots = (q.unsqueeze(2) * k_cols).sum(1) * C**-0.5  # (B, k*k, H, W)
    attn = nn.Softmax(dim=1)(dots)
    out = (attn.unsqueeze(1) * v_cols).sum(2)
    out += x
    out = F.conv2d(out, m.conv.weight, None, 1, 1)  # the official conv: no dilation, padding=1
    nn.ReLU(inplace=True)(out)  # acts on `out` in place: the returned tensor is rectified
    assert (out >= 0).all() and (out == 0).any()
    ours = m(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, out, atol=1e-12, rtol=1e-12)
    # the scale quirk: C^-0.5 with the full width, also with several heads
    assert make(12, 3).scale == pytest.approx(12**-0.5)
    assert make(12, 3, qk_scale="head_dim").scale == pytest.approx(4**-0.5)


# -- the cyclic shift by index arithmetic (no torch.roll) ----------------------------------------------------
@pytest.mark.parametrize("mode", ["map", "kv"])
def test_shift_is_exactly_the_documented_index_map(mode):
    """Head i, direction (dr, dc) = DIRECTIONS[i % 4], s pixels. ``map``: query p sits at p + s*dir in the rolled
    map, its neighbour t = (p + s*dir) + offset must lie inside the map, and is the token (t - s*dir) mod size.
    ``kv``: the neighbour t = p + offset must lie inside, and is the token (t - s*dir) mod size."""
    C, h, s, H, W = 8, 4, 2, 6, 7
    m = make(C, h, shift=s, shift_mode=mode, residual=False, activation="none")
    with torch.no_grad():  # the conv as the identity: the output is the attention output itself
        m.conv.weight.zero_()
        m.conv.weight[:, :, 1, 1] = torch.eye(C)
    x = torch.randn(1, H, W, C, dtype=torch.float64)
    q, k, v = (x @ m.qkv.weight.T + m.qkv.bias)[0].split(C, -1)
    expected = torch.zeros(H, W, C, dtype=torch.float64)
    d = C // h
    for i in range(h):
        (dr, dc), c = DIRECTIONS[i % 4], slice(i * d, (i + 1) * d)
        for pr in range(H):
            for pc in range(W):
                base = ((pr + s * dr) % H, (pc + s * dc) % W) if mode == "map" else (pr, pc)
                logits, values = [], []
                for a in (-1, 0, 1):
                    for b in (-1, 0, 1):
                        tr, tc = base[0] + a, base[1] + b
                        if 0 <= tr < H and 0 <= tc < W:
                            src = ((tr - s * dr) % H, (tc - s * dc) % W)
                            logits.append(m.scale * q[pr, pc, c] @ k[src][c])
                            values.append(v[src][c])
                        else:
                            logits.append(torch.tensor(0.0, dtype=torch.float64))
                            values.append(torch.zeros(d, dtype=torch.float64))
                p = torch.softmax(torch.stack(logits), 0)
                expected[pr, pc, c] = p @ torch.stack(values)
    torch.testing.assert_close(m(x)[0], expected, atol=1e-12, rtol=1e-12)


def test_shift_reaches_far_tokens():
    """kv mode, s = 3, 12x12 map: head 0 (rolled down) of the top-left query reads keys/values from rows 9 and
    10 (its window rows 0 and 1 moved up by 3, cyclically) instead of rows 0 and 1; row 0 also gives its query."""
    C, H = 8, 12
    for s, rows in ((0, {0, 1}), (3, {H - 3, H - 2})):
        m = make(C, 2, dtype=torch.float32, shift=s, shift_mode="kv", residual=False, activation="none")
        with torch.no_grad():
            m.conv.weight.zero_()
            m.conv.weight[:, :, 1, 1] = torch.eye(C)
        x = torch.randn(1, H, H, C, requires_grad=True)
        m(x)[0, 0, 0, :4].sum().backward()  # head 0 of the top-left query
        touched = {int(r) for r in x.grad[0].abs().sum((1, 2)).nonzero()}
        assert touched == rows | {0}


# -- properties ------------------------------------------------------------------------------------------------
PROPERTY_KNOBS = [
    {},
    {"kernel": (5, 1), "dilation": 2, "conv": "dilated", "border": "masked"},
    {"shift": 1, "inter_pool": 2, "conv": "depthwise"},
    {"shift": 2, "shift_mode": "kv", "inter_pool": 3, "pool_conv": "full", "conv_bias": True},
]


@pytest.mark.parametrize("knobs", PROPERTY_KNOBS)
def test_batch_independent_deterministic_and_low_precision(knobs):
    m = make(16, 2, dtype=torch.float32, backend="cpu_fast", **knobs)  # auto takes reference on maps this small
    x = torch.randn(3, 9, 7, 16)
    y = m(x)
    assert y.shape == x.shape and m.last_backend == "cpu_fast"
    torch.testing.assert_close(y[1:2], m(x[1:2]), atol=1e-6, rtol=1e-5)
    assert torch.equal(y, m(x))
    grads = []
    for _ in range(2):  # the backward is bitwise repeatable too
        xi = x.clone().requires_grad_(True)
        m(xi).square().sum().backward()
        grads.append(xi.grad)
    assert torch.equal(*grads)
    y16 = copy.deepcopy(m).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y, atol=0.15, rtol=0.05)


@pytest.mark.parametrize("knobs", PROPERTY_KNOBS)
def test_backends_agree_forward_and_backward_and_every_parameter_learns(knobs):
    m = make(16, 2, dtype=torch.float32, **knobs)
    x, target = torch.randn(2, 9, 7, 16), torch.randn(2, 9, 7, 16)
    results = {}
    for backend in ("reference", "cpu_fast"):
        m.set_backend(backend)
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * target).sum().backward()
        results[backend] = (y.detach(), xi.grad, {n: p.grad.clone() for n, p in m.named_parameters()})
    (y_ref, gx_ref, gp_ref), (y_fast, gx_fast, gp_fast) = results["reference"], results["cpu_fast"]
    torch.testing.assert_close(y_fast, y_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gx_fast, gx_ref, atol=1e-5, rtol=1e-4)
    for n, g in gp_ref.items():
        assert g.abs().sum() > 0, f"parameter {n} gets no gradient"
        torch.testing.assert_close(gp_fast[n], g, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(_natten_import_error() is not None, reason=f"natten does not import: {_natten_import_error()}")
def test_natten_forward_equals_reference_with_the_inward_border():
    m = make(16, 2, dtype=torch.float32, border="inward", inter_pool=2)
    x = torch.randn(2, 14, 12, 16)
    with torch.no_grad():
        m.set_backend("reference")
        expected = m(x)
        m.set_backend("natten")
        got = m(x)
    assert m.last_backend == "natten"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (2, 3), (5, 5), (9, 4)])
def test_any_size(size):
    for knobs in ({}, {"kernel": 5, "dilation": 3}, {"shift": 2, "inter_pool": 3}, {"border": "masked"}):
        m = attn_zoo.create_mechanism("msa_conv", 16, 4, **knobs)
        y = m(torch.randn(2, *size, 16))
        assert y.shape == (2, *size, 16) and torch.isfinite(y).all()


def test_clear_errors():
    with pytest.raises(KnobError, match=r"kernel must be odd and >= 1 .* got \(4, 3\)"):
        attn_zoo.create_mechanism("msa_conv", 16, 2, kernel=(4, 3))
    with pytest.raises(KnobError, match="dilation must be >= 1"):
        attn_zoo.create_mechanism("msa_conv", 16, 2, dilation=0)
    with pytest.raises(KnobError, match="shift must be >= 0 pixels"):
        attn_zoo.create_mechanism("msa_conv", 16, 2, shift=-1)
    with pytest.raises(KnobError, match="inter_pool must be >= 1"):
        attn_zoo.create_mechanism("msa_conv", 16, 2, inter_pool=0)
    with pytest.raises(KnobError, match="'conv'"):
        attn_zoo.create_mechanism("msa_conv", 16, 2, conv="grouped")
    m = attn_zoo.create_mechanism("msa_conv", 16, 2, border="inward", inter_pool=2)
    with pytest.raises(MechanismInputError, match=r"at least kernel \* dilation = 3x3, got 2x4 \(the 4x8 map"):
        m(torch.randn(1, 4, 8, 16))
    with pytest.raises(KnobError, match="natten' implements only border='inward'"):  # refused before compute
        attn_zoo.create_mechanism("msa_conv", 16, 2, backend="natten")
    with pytest.raises(KnobError, match=r"every kernel side >= 2, got kernel \(5, 1\)"):
        attn_zoo.create_mechanism("msa_conv", 16, 2, backend="natten", border="inward", kernel=(5, 1))
    with pytest.raises(MechanismInputError, match="expected 16 channels"):
        attn_zoo.create_mechanism("msa_conv", 16, 2)(torch.randn(1, 4, 4, 8))


# -- MACs formula against FlopCounterMode ------------------------------------------------------------------
MAC_CASES = [
    ({}, (14, 14)),
    ({"kernel": 5, "dilation": 2, "conv": "dilated"}, (9, 13)),
    ({"kernel": (5, 1), "conv": "depthwise"}, (7, 7)),
    ({"shift": 1, "inter_pool": 2}, (14, 14)),
    ({"inter_pool": 2, "pool_conv": "full"}, (9, 13)),
    ({"inter_pool": 3, "shift": 2, "shift_mode": "kv", "qkv_bias": False, "conv_bias": True}, (10, 8)),
]


@pytest.mark.parametrize("backend", ["reference", "cpu_fast"])
@pytest.mark.parametrize(("knobs", "size"), MAC_CASES)
def test_attention_macs_equal_flop_counter(knobs, size, backend):
    m = attn_zoo.create_mechanism("msa_conv", 32, 4, backend=backend, **knobs)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(torch.randn(1, *size, 32))
    assert m.attention_macs(*size) == counter.get_total_flops() // 2


# -- the tic preset and arbitrary resolution ----------------------------------------------------------------
def test_tic_preset_counts_and_layout():
    with torch.device("meta"):  # counting needs shapes only: build and run on the meta device (~1 s, not ~12)
        model = create_model("tic")
    counts = count_model(model, 224, device="meta")
    assert counts["params"] == 21_283_048  # attn-zoo count tic --json (docs/mechanisms/tic.md)
    assert counts["macs"] == 3_304_601_600
    sizes = (56, 28, 14, 7)
    analytic = sum(b.mixer.attention_macs(n, n) for stage, n in zip(model.stages, sizes) for b in stage.blocks)
    assert analytic == counts["attention_macs"] == 1_868_052_480
    for stage, f in zip(model.stages, (2, 2, 1, 1)):
        mixers = [b.mixer for b in stage.blocks]
        assert [m.shift for m in mixers] == [0, 1] * (len(mixers) // 2)
        assert all(m.inter_pool == f and m.kernel == (3, 3) and m.conv_kind == "standard" for m in mixers)
    assert model.config.pos_encoding == "none" and all(s.peg is None for s in model.stages)


@pytest.mark.parametrize("mixer", ["msa_conv", {"name": "msa_conv", "knobs": {"shift": 1, "inter_pool": 2}}])
def test_a_model_built_for_32_runs_unchanged_at_other_resolutions(mixer):
    model = create_model("zoo_s32", mixer=mixer).eval()
    other = create_model("zoo_s32", mixer=mixer, img_size=64).eval()
    other.load_state_dict(model.state_dict(), strict=True)  # no parameter or buffer depends on the size
    with torch.no_grad():
        for side in (24, 32, 40, 64):
            x = torch.randn(2, 3, side, side)
            y = model(x)
            assert y.shape == (2, 10) and torch.isfinite(y).all()
            torch.testing.assert_close(other(x), y, atol=0, rtol=0)
