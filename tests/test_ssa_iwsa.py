"""ScalableViT's SSA and IWSA: equality with references written from the formulas, properties, MAC formulas,
and the scalablevit_s preset's counts against the released code (32,000,472 params, 4.265G MACs at 224).

The comparison with the official classes themselves (max difference 3.6e-15 in float64 for the whole model)
was run by hand; docs/mechanisms/scalablevit.md has the command. These tests do not need the official code.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import attn_zoo
from attn_zoo.backbone import create_model
from attn_zoo.backbone.timm_weights import scalablevit_from_official
from attn_zoo.errors import BackendUnavailableError, KnobError, MechanismInputError
from attn_zoo.measure.counting import analytic_attention_macs, count_model


def randomise(m: torch.nn.Module) -> torch.nn.Module:
    """Random values in every parameter (biases and norm weights too), so no term vanishes by initialisation."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else p.shape[-1] ** -0.5))
    return m


def make(name: str, dim: int, heads: int, dtype=torch.float64, **knobs):
    return randomise(attn_zoo.create_mechanism(name, dim, heads, backend="reference", **knobs)).to(dtype)


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    logits = scale * q @ k.transpose(-1, -2)
    weights = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
    return weights / weights.sum(dim=-1, keepdim=True) @ v


# -- references written from the formulas ---------------------------------------------------------------
def naive_ssa(m, x: torch.Tensor, r_c: float, qk_scale: str = "official") -> torch.Tensor:
    """SSA one head at a time; the reduction conv as an explicit sum over each s x s cell; LN and GELU by hand."""
    B, H, W, C = x.shape
    s, h = m.r_n, m.num_heads
    tokens = x.reshape(B, H * W, C)
    if s == 1:
        q = linear(tokens, m.q)
        k, v = linear(tokens, m.kv).split(C, dim=-1)
    else:
        hr, wr = (H // s, W // s) if m.remainder == "drop" else (math.ceil(H / s), math.ceil(W / s))
        padded = torch.zeros(B, hr * s, wr * s, C, dtype=x.dtype)
        rows, cols = min(H, hr * s), min(W, wr * s)
        padded[:, :rows, :cols] = x[:, :rows, :cols]
        dw, pw = m.reduction[0], m.reduction[1]
        pooled = torch.zeros(B, hr, wr, C, dtype=x.dtype)
        for i in range(hr):
            for j in range(wr):
                cell = padded[:, i * s : (i + 1) * s, j * s : (j + 1) * s, :]  # (B, s, s, C)
                pooled[:, i, j] = (cell * dw.weight[:, 0].permute(1, 2, 0)).sum(dim=(1, 2)) + dw.bias
        src = pooled.reshape(B, hr * wr, C) @ pw.weight[:, :, 0, 0].T + pw.bias
        mean = src.mean(-1, keepdim=True)
        var = ((src - mean) ** 2).mean(-1, keepdim=True)
        src = (src - mean) / torch.sqrt(var + m.norm.eps) * m.norm.weight + m.norm.bias
        src = 0.5 * src * (1 + torch.erf(src / math.sqrt(2)))
        q, k, v = linear(tokens, m.q), linear(src, m.k), linear(src, m.v)
    dq, dv = q.shape[-1] // h, C // h
    scale = (C / h * r_c) ** -0.5 if qk_scale == "official" else dq**-0.5
    out = torch.cat(
        [
            softmax_attention(
                q[..., i * dq : (i + 1) * dq], k[..., i * dq : (i + 1) * dq], v[..., i * dv : (i + 1) * dv], scale
            )
            for i in range(h)
        ],
        dim=-1,
    )
    return linear(out, m.proj).reshape(B, H, W, C)


def naive_iwsa(m, x: torch.Tensor) -> torch.Tensor:
    """IWSA window by window over the real tokens of each (possibly clipped) window; LIM as an explicit 3x3 sum.

    With ``mask_padding=False`` the missing tokens of a clipped window are zero tokens projected by qkv (their
    q, k, v equal the qkv bias) and take part in the softmax.
    """
    B, H, W, C = x.shape
    h, d = m.num_heads, m.head_dim
    Mh, Mw = min(m.window, H), min(m.window, W)
    qkv = linear(x, m.qkv)  # (B, H, W, 3C)
    out = torch.zeros(B, H, W, C, dtype=x.dtype)
    for r0 in range(0, H, Mh):
        for c0 in range(0, W, Mw):
            rows, cols = slice(r0, min(r0 + Mh, H)), slice(c0, min(c0 + Mw, W))
            real = qkv[:, rows, cols]
            n = real.shape[1] * real.shape[2]
            tokens = real.reshape(B, n, 3 * C)
            if not m.mask_padding and n < Mh * Mw:
                tokens = torch.cat([tokens, m.qkv.bias.expand(B, Mh * Mw - n, 3 * C)], dim=1)
            q, k, v = tokens.split(C, dim=-1)
            heads = [
                softmax_attention(
                    q[..., i * d : (i + 1) * d], k[..., i * d : (i + 1) * d], v[..., i * d : (i + 1) * d], d**-0.5
                )
                for i in range(h)
            ]
            out[:, rows, cols] = torch.cat(heads, dim=-1)[:, :n].reshape(real.shape[:3] + (C,))
    if m.lim is not None:
        v = qkv[..., 2 * C :]
        lim = m.lim.bias.expand(B, H, W, C).clone()
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                shifted = torch.zeros_like(v)  # shifted[i, j] = v[i + di, j + dj], zero outside the map
                shifted[:, max(-di, 0) : H - max(di, 0), max(-dj, 0) : W - max(dj, 0)] = v[
                    :, max(di, 0) : H + min(di, 0), max(dj, 0) : W + min(dj, 0)
                ]
                lim = lim + shifted * m.lim.weight[:, 0, di + 1, dj + 1]
        out = out + lim
    return linear(out, m.proj)


SSA_CASES = [
    # (dim, heads, size, knobs)
    (16, 2, (6, 8), {"r_n": 2, "r_c": 1.25}),
    (16, 2, (9, 10), {"r_n": 4, "r_c": 1.25}),  # 9x10 is no multiple of 4: the official conv drops the remainder
    (16, 2, (7, 8), {"r_n": 3, "r_c": 0.5, "remainder": "pad"}),
    (16, 2, (2, 3), {"r_n": 4, "r_c": 1.25, "remainder": "pad"}),  # smaller than s
    (16, 2, (5, 6), {"r_n": 1, "r_c": 1.25}),  # plain MHA, with the official scale quirk
    (16, 2, (5, 6), {"r_n": 1, "r_c": 1.25, "qk_scale": "head_dim"}),
    (16, 4, (6, 6), {"r_n": 2, "r_c": 1.5, "qk_scale": "head_dim"}),
]

IWSA_CASES = [
    (12, 3, (8, 8), {"window": 4}),
    (12, 3, (9, 13), {"window": 4}),  # padded, masked
    (12, 3, (9, 13), {"window": 4, "mask_padding": False}),
    (12, 3, (5, 9), {"window": 7}),  # H < M: one window row of 5; W padded to 14
    (12, 3, (6, 7), {"window": 3, "lim": False}),
]


@pytest.mark.parametrize(("dim", "heads", "size", "knobs"), SSA_CASES)
def test_ssa_equals_naive_reference(dim, heads, size, knobs):
    m = make("ssa", dim, heads, **knobs)
    x = torch.randn(2, *size, dim, dtype=torch.float64)
    expected = naive_ssa(m, x, knobs["r_c"], knobs.get("qk_scale", "official"))
    torch.testing.assert_close(m(x), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("dim", "heads", "size", "knobs"), IWSA_CASES)
def test_iwsa_equals_naive_reference(dim, heads, size, knobs):
    m = make("iwsa", dim, heads, **knobs)
    x = torch.randn(2, *size, dim, dtype=torch.float64)
    torch.testing.assert_close(m(x), naive_iwsa(m, x), atol=1e-10, rtol=1e-10)


def test_ssa_at_s1_is_global_attention_with_the_official_scale():
    ssa = make("ssa", 16, 2, r_n=1, r_c=1.0)
    glob = attn_zoo.create_mechanism("global", 16, 2, backend="reference").double()
    glob.qkv.weight.data = torch.cat([ssa.q.weight, ssa.kv.weight]).detach()
    glob.qkv.bias.data = torch.cat([ssa.q.bias, ssa.kv.bias]).detach()
    glob.proj.load_state_dict(ssa.proj.state_dict())
    x = torch.randn(2, 5, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(ssa(x), glob(x), atol=1e-12, rtol=1e-12)
    # the quirk: at s = 1 the official scale still carries c, so c = 1.25 changes the output
    quirky = make("ssa", 16, 2, r_n=1, r_c=1.25)
    clean = attn_zoo.create_mechanism("ssa", 16, 2, r_n=1, r_c=1.25, qk_scale="head_dim").double()
    clean.load_state_dict(quirky.state_dict())
    assert quirky.scale == pytest.approx((8 * 1.25) ** -0.5) and clean.scale == pytest.approx(8**-0.5)
    assert (quirky(x) - clean(x)).abs().max() > 1e-3


def test_iwsa_window_clamps_to_a_smaller_map():
    small = make("iwsa", 8, 2, window=7)
    exact = attn_zoo.create_mechanism("iwsa", 8, 2, window=5).double()
    exact.load_state_dict(small.state_dict())
    x = torch.randn(1, 5, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(small(x), exact(x), atol=1e-12, rtol=1e-12)
    assert small.window_for(5, 12) == (5, 7)


def test_stage_defaults_follow_the_paper():
    for stage, (r_n, r_c) in enumerate([(8, 1.25), (4, 1.25), (2, 1.25), (1, 1.0), (1, 1.0)]):
        m = attn_zoo.create_mechanism("ssa", 64, 2, stage=stage)
        assert (m.r_n, m.r_c) == (r_n, r_c)
    assert attn_zoo.create_mechanism("ssa", 64, 2, stage=0).qk_dim == 80


# -- bad input ----------------------------------------------------------------------------------------------
def test_clear_errors():
    m = attn_zoo.create_mechanism("ssa", 16, 2, r_n=8, r_c=1.25)
    with pytest.raises(MechanismInputError, match=r"4x9 map is smaller than r_n=8.*remainder='pad'"):
        m(torch.randn(1, 4, 9, 16))
    with pytest.raises(MechanismInputError, match=r"int\(20 \* 1.25\) = 25 .* multiple of num_heads \(4\)"):
        attn_zoo.create_mechanism("ssa", 20, 4, r_n=2, r_c=1.25)
    with pytest.raises(KnobError, match="r_n must be an integer >= 1"):
        attn_zoo.create_mechanism("ssa", 16, 2, r_n=0)
    with pytest.raises(KnobError, match="r_c must be > 0"):
        attn_zoo.create_mechanism("ssa", 16, 2, r_c=0.0)
    with pytest.raises(KnobError, match="window must be >= 1"):
        attn_zoo.create_mechanism("iwsa", 16, 2, window=0)
    with pytest.raises(KnobError, match="'remainder'"):
        attn_zoo.create_mechanism("ssa", 16, 2, remainder="ceil")
    with pytest.raises(MechanismInputError, match="expected 16 channels"):
        attn_zoo.create_mechanism("iwsa", 16, 2)(torch.randn(1, 4, 4, 8))


@pytest.mark.parametrize("name", ["ssa", "iwsa"])
def test_xformers_is_listed_and_refused_on_cpu(name):
    m = attn_zoo.create_mechanism(name, 16, 2, backend="xformers")
    assert m.backends[-1] == "xformers"
    with pytest.raises(BackendUnavailableError, match="xformers"):
        m(torch.randn(1, 8, 8, 16))


# -- properties -----------------------------------------------------------------------------------------------
PROPERTY_CASES = [
    ("ssa", {"r_n": 2, "r_c": 1.25}, (7, 9)),
    ("ssa", {"r_n": 4, "r_c": 1.25, "remainder": "pad"}, (5, 6)),
    ("ssa", {"r_n": 1, "r_c": 1.0}, (5, 6)),
    ("iwsa", {"window": 4}, (7, 9)),
    ("iwsa", {"window": 4, "mask_padding": False}, (6, 5)),
]


@pytest.mark.parametrize(("name", "knobs", "size"), PROPERTY_CASES)
def test_properties(name, knobs, size):
    m = make(name, 16, 2, dtype=torch.float32, **knobs)
    x = torch.randn(3, *size, 16)
    y = m(x)
    assert y.shape == x.shape
    # batch independence, and bitwise determinism on CPU
    torch.testing.assert_close(y[1:2], m(x[1:2]), atol=1e-6, rtol=1e-5)
    assert torch.equal(y, m(x))
    # bfloat16 runs and stays near float32
    out16 = copy.deepcopy(m).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), y, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(("name", "knobs", "size"), PROPERTY_CASES)
def test_backends_agree_forward_and_backward_and_every_parameter_learns(name, knobs, size):
    m = make(name, 16, 2, dtype=torch.float32, **knobs)
    x = torch.randn(2, *size, 16)
    target = torch.randn(2, *size, 16)
    results = {}
    for backend in ("reference", "sdpa"):
        m.set_backend(backend)
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * target).sum().backward()
        assert m.last_backend == backend
        results[backend] = (y.detach(), xi.grad, {n: p.grad.clone() for n, p in m.named_parameters()})
    (y_ref, gx_ref, gp_ref), (y_sdpa, gx_sdpa, gp_sdpa) = results["reference"], results["sdpa"]
    torch.testing.assert_close(y_sdpa, y_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gx_sdpa, gx_ref, atol=1e-5, rtol=1e-4)
    for n, g in gp_ref.items():
        assert g.abs().sum() > 0, f"{name}: parameter {n} gets no gradient"
        torch.testing.assert_close(gp_sdpa[n], g, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (3, 2), (7, 7), (8, 15), (16, 9)])
def test_any_size(size):
    for name, knobs in [("iwsa", {"window": 7}), ("ssa", {"r_n": 8, "remainder": "pad"}), ("ssa", {"r_n": 1})]:
        m = attn_zoo.create_mechanism(name, 16, 2, **knobs)
        y = m(torch.randn(2, *size, 16))
        assert y.shape == (2, *size, 16) and torch.isfinite(y).all()


# -- MACs formulas against FlopCounterMode ------------------------------------------------------------------
MAC_CASES = [
    ("ssa", {"r_n": 1, "r_c": 1.0}, (7, 7)),
    ("ssa", {"r_n": 1, "r_c": 1.25}, (6, 9)),
    ("ssa", {"r_n": 2, "r_c": 1.25}, (14, 14)),
    ("ssa", {"r_n": 4, "r_c": 1.25}, (10, 13)),
    ("ssa", {"r_n": 4, "r_c": 0.5, "remainder": "pad"}, (10, 13)),
    ("ssa", {"r_n": 8, "r_c": 1.0}, (16, 24)),
    ("iwsa", {"window": 7}, (14, 14)),
    ("iwsa", {"window": 7}, (9, 16)),
    ("iwsa", {"window": 4}, (9, 13)),
    ("iwsa", {"window": 4, "mask_padding": False}, (9, 13)),
    ("iwsa", {"window": 4, "lim": False}, (8, 8)),
    ("iwsa", {"window": 7}, (5, 3)),
]


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize(("name", "knobs", "size"), MAC_CASES)
def test_attention_macs_equal_flop_counter(name, knobs, size, backend):
    m = attn_zoo.create_mechanism(name, 32, 4, backend=backend, **knobs)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(torch.randn(1, *size, 32))
    assert m.attention_macs(*size) == counter.get_total_flops() // 2


# -- the scalablevit_s preset -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scalablevit_s():
    return create_model("scalablevit_s").eval()


def test_scalablevit_s_matches_the_released_code_counts(scalablevit_s):
    counts = count_model(scalablevit_s, 224)
    assert counts["params"] == 32_000_472  # scalable_vit_small of Yangr116/ScalableViT, counted here
    assert abs(counts["macs"] / 4_265_295_104 - 1) < 1e-3  # the same model's FlopCounterMode count / 2
    assert analytic_attention_macs(scalablevit_s, 224) == counts["attention_macs"]


def test_scalablevit_s_layout(scalablevit_s):
    stages = scalablevit_s.stages
    for i, (r_n, qk_dim) in enumerate([(8, 80), (4, 160), (2, 320), (1, 512)]):
        mixers = [b.mixer for b in stages[i].blocks]
        assert [m.name for m in mixers] == ["iwsa", "ssa"] * (len(mixers) // 2)
        assert all(m.window == 7 for m in mixers[::2])
        assert all(m.r_n == r_n and m.qk_dim == qk_dim for m in mixers[1::2])
        assert stages[i].peg is not None
    assert scalablevit_s.stem.proj.kernel_size == (7, 7) and scalablevit_s.stem.norm.eps == 1e-6
    assert [type(layer).__name__ for layer in scalablevit_s.head] == ["Linear", "LayerNorm", "GELU", "Linear"]


@pytest.mark.parametrize("img", [64, 100])
def test_scalablevit_s_runs_at_other_resolutions(img):
    model = create_model("scalablevit_s", img_size=img, num_classes=10, depths=(2, 2, 2, 2)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, img, img)).shape == (1, 10)


@pytest.mark.parametrize(
    ("official", "ours"),
    [
        ("patch_embeds.0.proj.weight", "stem.proj.weight"),
        ("patch_embeds.2.norm.bias", "stages.2.downsample.norm.bias"),
        ("pos_block.3.proj.0.weight", "stages.3.peg.proj.weight"),
        ("stages.2.10.attn.lim_func.bias", "stages.2.blocks.10.mixer.lim.bias"),
        ("stages.0.1.attn.norm_act.0.weight", "stages.0.blocks.1.mixer.norm.weight"),
        ("stages.1.1.attn.reduction.1.weight", "stages.1.blocks.1.mixer.reduction.1.weight"),
        ("stages.3.1.attn.kv.bias", "stages.3.blocks.1.mixer.kv.bias"),
        ("stages.3.1.mlp.fc2.weight", "stages.3.blocks.1.mlp.fc2.weight"),
        ("head.3.weight", "head.3.weight"),
    ],
)
def test_official_weight_names_map_onto_the_preset(official, ours, scalablevit_s):
    assert list(scalablevit_from_official({official: torch.zeros(1)})) == [ours]
    assert ours in scalablevit_s.state_dict()
