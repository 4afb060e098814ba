"""DilateFormer's MSDA: a loop-by-loop definition, the official layout, properties, backends, counts, the preset."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import attn_zoo
from attn_zoo.backbone.timm_weights import dilateformer_from_official
from attn_zoo.errors import KnobError, MechanismInputError, UnknownNameError
from attn_zoo.layers.backends import availability, neighborhood_attention
from attn_zoo.layers.neighborhood import _natten_import_error
from attn_zoo.measure.counting import analytic_attention_macs, count_model

NATTEN_REASON = _natten_import_error()  # natten runs here (CPU forward) whenever it imports
requires_natten = pytest.mark.skipif(NATTEN_REASON is not None, reason=f"natten unavailable: {NATTEN_REASON}")


def make(dim: int = 24, heads: int = 6, dtype: torch.dtype = torch.float32, **knobs) -> torch.nn.Module:
    """An MSDA with non-trivial biases (zero biases would hide a bias-layout mistake)."""
    m = attn_zoo.create_mechanism("msda", dim, heads, **knobs).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


# ---------------------------------------------------------------------------------------------------------
# A definition written from the paper's formulas: Python loops over groups, heads, positions, neighbours.
# ---------------------------------------------------------------------------------------------------------


def _axis(x: int, n: int, k: int, d: int, border: str) -> list[int]:
    """Neighbour coordinates of x along one axis (outside [0, n) allowed unless inward)."""
    r = (k - 1) // 2
    if border != "inward":
        return [x + (a - r) * d for a in range(k)]
    members = list(range(x % d, n, d))  # x's dilation sub-grid, as NAT/DiNAT define it
    centre = min(max(members.index(x), r), len(members) - 1 - r)
    return members[centre - r : centre + r + 1]


def naive_msda(m, x: torch.Tensor) -> torch.Tensor:
    """qkv channels read as (3, n groups, heads per group, head_dim), as the official reshape does."""
    B, H, W, _ = x.shape
    kh, kw = m.kernel
    n, hd = len(m.dilations), m.head_dim
    g = m.num_heads // n
    qkv = (x @ m.qkv.weight.t() + m.qkv.bias).reshape(B, H, W, 3, n, g, hd)
    q, k, v = qkv.unbind(3)  # (B, H, W, n, g, hd) each
    rows = []
    for i in range(H):
        row = []
        for j in range(W):
            groups = []
            for gi, r in enumerate(m.dilations):
                logits, values = [], []
                for y in _axis(i, H, kh, r, m.border):
                    for z in _axis(j, W, kw, r, m.border):
                        if 0 <= y < H and 0 <= z < W:
                            logits.append(m.scale * (q[:, i, j, gi] * k[:, y, z, gi]).sum(-1))  # (B, g)
                            values.append(v[:, y, z, gi])  # (B, g, hd)
                        elif m.border == "zero":  # a zero key and value that stay in the softmax
                            logits.append(torch.zeros_like(q[:, i, j, gi, :, 0]))
                            values.append(torch.zeros_like(v[:, i, j, gi]))
                p = torch.stack(logits, -1).softmax(-1)  # (B, g, neighbours)
                groups.append(torch.einsum("bgk,bkgd->bgd", p, torch.stack(values, 1)).reshape(B, g * hd))
            row.append(torch.cat(groups, -1))
        rows.append(torch.stack(row, 1))
    out = torch.stack(rows, 1)  # (B, H, W, C): groups concatenated in order
    return out @ m.proj.weight.t() + m.proj.bias


# (border, H, W, kernel, dilations, heads): square and not, rectangular kernels, maps smaller than the window
CASES = [
    ("zero", 5, 6, 3, (1, 2, 3), 3),
    ("zero", 3, 2, 5, (2,), 2),
    ("zero", 4, 5, (3, 5), (1, 3), 4),
    ("masked", 5, 4, 3, (1, 3), 4),
    ("masked", 2, 5, (5, 3), (1, 2, 3), 3),
    ("inward", 9, 9, 3, (3, 1), 2),
    ("inward", 7, 10, (3, 5), (2, 1), 2),
    ("inward", 6, 6, 3, (1, 1, 2), 3),
]


@pytest.mark.parametrize(
    "border,H,W,kernel,dilations,heads", CASES, ids=[f"{c[0]}-{c[1]}x{c[2]}-k{c[3]}-d{c[4]}" for c in CASES]
)
def test_matches_loop_definition_forward_and_backward(border, H, W, kernel, dilations, heads):
    m = make(2 * heads, heads, torch.float64, kernel=kernel, dilations=dilations, border=border)
    x = torch.randn(2, H, W, 2 * heads, dtype=torch.float64, requires_grad=True)
    expected = naive_msda(m, x)
    g = torch.randn_like(expected)
    grads_expected = torch.autograd.grad(expected, [x, *m.parameters()], g)
    for backend in ("reference", "cpu_fast"):
        m.set_backend(backend)
        out = m(x)
        torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
        for a, b in zip(torch.autograd.grad(out, [x, *m.parameters()], g), grads_expected):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_official_layout_conv_qkv_and_unfold():
    """The official formulation (1x1 Conv2d qkv read as (3, n, C/n), nn.Unfold windows), written here from the
    paper's description; its Conv2d weight loads into our Linear by a reshape."""
    C, heads, dil, ks = 12, 6, (1, 2, 3), 3
    m = make(C, heads, torch.float64, dilations=dil)
    conv_w = m.qkv.weight.reshape(3 * C, C, 1, 1)
    x = torch.randn(2, 7, 6, C, dtype=torch.float64)
    B, H, W, _ = x.shape
    n, hd = len(dil), C // heads
    qkv = F.conv2d(x.permute(0, 3, 1, 2), conv_w, m.qkv.bias).reshape(B, 3, n, C // n, H, W)
    outs = []
    for i, r in enumerate(dil):
        q, k, v = qkv[:, 0, i], qkv[:, 1, i], qkv[:, 2, i]  # (B, C/n, H, W)
        g = C // n // hd
        kk = F.unfold(k, ks, dilation=r, padding=r * (ks - 1) // 2).reshape(B, g, hd, ks * ks, H * W)
        vv = F.unfold(v, ks, dilation=r, padding=r * (ks - 1) // 2).reshape(B, g, hd, ks * ks, H * W)
        qq = q.reshape(B, g, hd, H * W)
        attn = (torch.einsum("bgdn,bgdkn->bgnk", qq, kk) * hd**-0.5).softmax(-1)
        outs.append(torch.einsum("bgnk,bgdkn->bngd", attn, vv).reshape(B, H, W, C // n))
    expected = F.linear(torch.cat(outs, -1), m.proj.weight, m.proj.bias)
    torch.testing.assert_close(m(x), expected, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("border", ["zero", "masked"])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 17), (8, 5)])
def test_any_map_size_with_zero_and_masked_borders(border, size):
    m = make(border=border)  # kernel 3, dilations up to 3: windows up to 7 wide
    x = torch.randn(2, *size, 24, requires_grad=True)
    out = m(x)
    out.sum().backward()
    assert out.shape == x.shape and torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_inward_border_refuses_small_maps_before_compute():
    m = make(border="inward")
    m(torch.randn(1, 9, 9, 24))  # kernel 3 x dilation 3 = 9: the smallest map allowed
    calls = []
    m.qkv.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(MechanismInputError, match=r"inward.*at least .*9x9.*got 8x12"):
        m(torch.randn(1, 8, 12, 24))
    assert not calls


@pytest.mark.parametrize("border", ["zero", "masked", "inward"])
def test_batch_independence(border):
    m = make(border=border)
    x = torch.randn(3, 9, 10, 24)
    with torch.no_grad():
        full = m(x)
        for i in range(3):
            torch.testing.assert_close(full[i : i + 1], m(x[i : i + 1]), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu_fast"])
def test_gradients_reach_every_parameter(backend):
    m = make(border="zero")
    m.set_backend(backend)
    m(torch.randn(2, 6, 7, 24)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("border", ["zero", "inward"])
def test_deterministic_on_cpu(border):
    m = make(border=border)
    x = torch.randn(2, 9, 9, 24, requires_grad=True)
    runs = []
    for _ in range(2):
        m.zero_grad()
        x.grad = None
        out = m(x)
        out.square().sum().backward()
        runs.append((out.detach(), x.grad.clone(), m.qkv.weight.grad.clone()))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_input_is_not_modified_and_autograd_safe():
    """The official code writes each group's output into a view of its input; ours must not. exp() saves its
    output for backward, so any in-place write into that output would make backward fail."""
    m = make()
    a = torch.randn(2, 6, 6, 24, requires_grad=True)
    x = a.exp()
    before = x.detach().clone()
    m(x).sum().backward()
    assert torch.equal(x.detach(), before)
    assert a.grad is not None and torch.isfinite(a.grad).all()


@pytest.mark.parametrize("border", ["zero", "masked", "inward"])
def test_bfloat16_close_to_float32(border):
    m32 = make(border=border)
    m16 = make(border=border)
    m16.load_state_dict(m32.state_dict())
    m16.to(torch.bfloat16)
    x = torch.randn(2, 9, 9, 24)
    x32, x16 = x.clone().requires_grad_(), x.to(torch.bfloat16).requires_grad_()
    out32, out16 = m32(x32), m16(x16)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, atol=0.1, rtol=0.05)
    out32.sum().backward()
    out16.float().sum().backward()
    assert x16.grad.dtype == torch.bfloat16
    rel = (x16.grad.float() - x32.grad).norm() / x32.grad.norm()
    assert rel < 0.03


@pytest.mark.parametrize("border", ["zero", "masked", "inward"])
def test_cpu_fast_equals_reference_float32(border):
    m = make(border=border, kernel=(3, 5), dilations=(1, 2, 2))
    x = torch.randn(2, 10, 11, 24, requires_grad=True)
    results = []
    for backend in ("reference", "cpu_fast"):
        m.set_backend(backend)
        m.zero_grad()
        x.grad = None
        out = m(x)
        out.square().sum().backward()
        assert m.last_backend == backend
        results.append((out, x.grad, *(p.grad for p in m.parameters())))
    for a, b in zip(*results):  # float32 sums in different orders: compare against each tensor's scale
        assert (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-6


@requires_natten
def test_natten_equals_reference_forward_on_cpu():
    m = make(24, 3, border="inward")  # natten's CPU (flex) path needs a power-of-two head_dim
    x = torch.randn(2, 9, 10, 24)
    with torch.no_grad():
        m.set_backend("reference")
        expected = m(x)
        m.set_backend("natten")
        out = m(x)
    assert m.last_backend == "natten"
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


def test_auto_backend_on_cpu_and_registry():
    m = make(border="inward")
    m(torch.randn(1, 28, 28, 24))  # DilateFormer-T stage-2 sized: the shape table puts cpu_fast first
    assert m.last_backend == "cpu_fast"  # natten is used by "auto" only on CUDA
    found = availability(m.backends, "cpu")
    assert found["cpu_fast"] is None and found["reference"] is None
    assert found["natten"] is not None  # on CPU natten is never listed as a fast path (forward-only flex)


# ---------------------------------------------------------------------------------------------------------
# Bad knobs
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "heads,knobs,match",
    [
        (4, {"dilations": (1, 2, 3)}, r"num_heads \(4\) must be divisible by the number of dilations \(3"),
        (3, {"kernel": 4}, r"kernel must be odd"),
        (3, {"kernel": (3, 2)}, r"kernel must be odd"),
        (3, {"dilations": ()}, r"dilations must be a non-empty list"),
        (3, {"dilations": (1, 0, 2)}, r"dilations must be a non-empty list of ints >= 1"),
        (3, {"border": "reflect"}, r"knob 'border'"),
    ],
)
def test_bad_knobs(heads, knobs, match):
    with pytest.raises(KnobError, match=match):
        attn_zoo.create_mechanism("msda", 12 * heads, heads, **knobs)


def test_bad_backends():
    with pytest.raises(KnobError, match=r"backend 'natten' implements only border='inward'"):
        attn_zoo.create_mechanism("msda", 24, 3, backend="natten")
    with pytest.raises(UnknownNameError, match=r"allowed: auto, cpu_fast, natten, reference"):
        attn_zoo.create_mechanism("msda", 24, 3, backend="sdpa")


# ---------------------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------------------


def _counted_macs(m, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("border", ["zero", "inward"])
def test_flop_counter_equals_formula_on_every_backend(border):
    m = make(96, 6, border=border, kernel=(3, 5))
    x = torch.randn(1, 10, 15, 96)
    backends = ["reference", "cpu_fast"] + (["natten"] if border == "inward" and NATTEN_REASON is None else [])
    counts = {}
    for backend in backends:
        m.set_backend(backend)
        counts[backend] = _counted_macs(m, x)
    assert set(counts.values()) == {m.attention_macs(10, 15)}, counts
    # qkv + proj, and per head H*W*k_h*k_w*(d + d): out-of-map neighbours are counted as unfold computes them
    assert m.attention_macs(10, 15) == 4 * 150 * 96 * 96 + 6 * 150 * 15 * 2 * 16


@requires_natten
def test_kernel_natten_backend_under_flop_counter():
    q = torch.randn(1, 2, 9, 9, 16)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        neighborhood_attention(q, q, q, 3, 1, scale=0.25, border="inward", backend="natten")
    assert counter.get_total_flops() == 2 * 2 * 81 * 9 * 32


# ---------------------------------------------------------------------------------------------------------
# The dilateformer_t preset and the harness family
# ---------------------------------------------------------------------------------------------------------

# The released code (JIAOJIAYUASD/dilateformer, dilateformer_tiny) counted here with FlopCounterMode at 224:
# 17,238,744 parameters and 6,323,892,480 FLOPs (see docs/mechanisms/dilateformer.md for the command).
OFFICIAL_PARAMS, OFFICIAL_FLOPS = 17_238_744, 6_323_892_480


@pytest.mark.parametrize("backend", ["reference", "cpu_fast"])
def test_dilateformer_t_counts_equal_the_released_code(backend):
    with torch.device("meta"):  # shapes are all the counter needs; meta keeps this test fast
        model = attn_zoo.create_model("dilateformer_t")
    for m in model.mixers():
        if m.name == "msda":
            m.set_backend(backend)
    counts = count_model(model, 224, device="meta")
    assert counts["params"] == OFFICIAL_PARAMS
    assert counts["flops"] == OFFICIAL_FLOPS
    assert abs(counts["macs"] / 3.162e9 - 1) < 0.01 and abs(counts["params"] / 17.24e6 - 1) < 0.01


def test_dilateformer_t_structure():
    with torch.device("meta"):
        model = attn_zoo.create_model("dilateformer_t")
    names = [[b.mixer.name for b in s.blocks] for s in model.stages]
    assert names == [["msda"] * 2, ["msda"] * 2, ["global"] * 6, ["global"] * 2]
    msda = model.stages[0].blocks[0].mixer
    assert (msda.kernel, msda.dilations, msda.border, msda.qkv.bias is not None) == ((3, 3), (1, 2, 3), "zero", True)
    assert all(b.cpe is not None for s in model.stages for b in s.blocks)
    assert model.stages[0].blocks[0].norm1.eps == 1e-6
    assert [type(s.downsample).__name__ for s in model.stages] == ["Identity"] + ["ConvDownsample"] * 3
    assert all(s.downsample.is_bn for s in model.stages[1:])


def test_analytic_attention_macs_equal_the_counter():
    model = attn_zoo.create_model("zoo_s32", mixer=["msda", "msda", "global", "global"])
    assert analytic_attention_macs(model, 32) == count_model(model, 32)["attention_macs"]


def _official_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the official dilateformer_tiny, as its module tree names them."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (cin, cout) in zip((0, 3, 6), ((3, 16), (16, 32), (32, 64))):
        shapes[f"patch_embed.proj.{i}.weight"] = (cout, cin, 3, 3)
        for bn in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"patch_embed.proj.{i + 1}.{bn}"] = (cout,)
        shapes[f"patch_embed.proj.{i + 1}.num_batches_tracked"] = ()
    shapes["patch_embed.proj.9.weight"] = (72, 64, 3, 3)
    for s, (dim, depth) in enumerate(zip((72, 144, 288, 576), (2, 2, 6, 2))):
        for j in range(depth):
            p = f"stages.{s}.blocks.{j}."
            shapes |= {p + "pos_embed.weight": (dim, 1, 3, 3), p + "pos_embed.bias": (dim,)}
            shapes |= {p + f"norm{n}.{w}": (dim,) for n in (1, 2) for w in ("weight", "bias")}
            shapes[p + "attn.qkv.weight"] = (3 * dim, dim, 1, 1) if s < 2 else (3 * dim, dim)
            shapes |= {
                p + "attn.qkv.bias": (3 * dim,),
                p + "attn.proj.weight": (dim, dim),
                p + "attn.proj.bias": (dim,),
            }
            shapes |= {p + "mlp.fc1.weight": (4 * dim, dim), p + "mlp.fc1.bias": (4 * dim,)}
            shapes |= {p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,)}
        if s < 3:
            p = f"stages.{s}.downsample.proj."
            shapes |= {p + "0.weight": (2 * dim, dim, 3, 3), p + "0.bias": (2 * dim,)}
            shapes |= {p + f"1.{bn}": (2 * dim,) for bn in ("weight", "bias", "running_mean", "running_var")}
            shapes[p + "1.num_batches_tracked"] = ()
    return shapes | {"norm.weight": (576,), "norm.bias": (576,), "head.weight": (1000, 576), "head.bias": (1000,)}


def test_official_weights_map_onto_dilateformer_t():
    with torch.device("meta"):
        model = attn_zoo.create_model("dilateformer_t")
    official = {
        k: torch.randn(shape) if shape else torch.tensor(7) for k, shape in _official_state_dict_shapes().items()
    }
    mapped = dilateformer_from_official(official)
    ours = model.state_dict()
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)
    assert torch.equal(mapped["stages.1.downsample.conv.weight"], official["stages.0.downsample.proj.0.weight"])
    assert torch.equal(
        mapped["stages.3.downsample.norm.running_var"], official["stages.2.downsample.proj.1.running_var"]
    )
    assert torch.equal(
        mapped["stages.0.blocks.1.mixer.qkv.weight"][:, :, None, None], official["stages.0.blocks.1.attn.qkv.weight"]
    )
    assert torch.equal(mapped["stages.2.blocks.5.cpe.proj.bias"], official["stages.2.blocks.5.pos_embed.bias"])


def test_msda_in_every_stage_of_zoo_s32():
    """DilateFormer uses MSDA only at 56x56 and 28x28; the harness family puts it at 16, 8, 4 and 2."""
    model = attn_zoo.create_model("zoo_s32", mixer="msda")
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    out.sum().backward()
    assert out.shape == (2, 10)
    assert all(p.grad is not None for p in model.parameters())
    assert {m.last_backend for m in model.mixers()} == {"cpu_fast"}
