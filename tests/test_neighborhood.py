"""Tests for attn_zoo.layers.neighborhood: parity with a loop-by-loop definition, DilateFormer, natten."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from attn_zoo.errors import AttnZooError, BackendUnavailableError, MechanismInputError, UnknownNameError
from attn_zoo.layers import backends
from attn_zoo.layers import neighborhood as nb
from attn_zoo.layers.backends import available_backends, neighborhood_attention
from attn_zoo.layers.neighborhood import neighborhood_attention_macs

BORDERS = ("zero", "masked", "inward")
OURS = ("reference", "cpu_fast")

# (H, W, kernel, dilation): square and not, rectangular kernels, dilations 1..3, sizes that are not a
# multiple of the dilation (unequal sub-grids), and windows wider than the map (zero/masked only).
CASES = [
    (5, 7, (3, 3), (1, 1)),
    (7, 6, (3, 5), (2, 1)),
    (9, 8, (5, 1), (1, 3)),
    (6, 9, (1, 5), (2, 2)),
    (10, 9, (3, 3), (3, 3)),
    (4, 5, (5, 5), (3, 3)),
    (3, 3, (7, 3), (1, 2)),
]


def _fits_inward(H: int, W: int, kernel: tuple[int, int], dil: tuple[int, int]) -> bool:
    return kernel[0] * dil[0] <= H and kernel[1] * dil[1] <= W


def _case_params() -> list:
    params = []
    for border in BORDERS:
        for case in CASES:
            H, W, kernel, dil = case
            if border == "inward" and not _fits_inward(H, W, kernel, dil):
                continue
            params.append(pytest.param(border, *case, id=f"{border}-{H}x{W}-k{kernel}-d{dil}"))
    return params


# ---------------------------------------------------------------------------------------------------------
# A definition written straight from the docstring: Python loops over positions and neighbours.
# ---------------------------------------------------------------------------------------------------------


def _naive_window(x: int, n: int, k: int, d: int, border: str) -> list[int]:
    """Neighbour coordinates of position x along one axis (may fall outside [0, n) unless inward)."""
    r = (k - 1) // 2
    if border != "inward":
        return [x + (a - r) * d for a in range(k)]
    members = list(range(x % d, n, d))  # x's dilation sub-grid
    pos = members.index(x)
    centre = min(max(pos, r), len(members) - 1 - r)
    return members[centre - r : centre + r + 1]


def _naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel: tuple[int, int],
    dil: tuple[int, int],
    scale: float,
    border: str,
) -> torch.Tensor:
    B, h, H, W, _ = q.shape
    d_v = v.shape[-1]
    rows_out = []
    for i in range(H):
        row = []
        for j in range(W):
            logits, values = [], []
            for r in _naive_window(i, H, kernel[0], dil[0], border):
                for c in _naive_window(j, W, kernel[1], dil[1], border):
                    if 0 <= r < H and 0 <= c < W:
                        logits.append(scale * (q[:, :, i, j] * k[:, :, r, c]).sum(-1))
                        values.append(v[:, :, r, c])
                    elif border == "zero":  # a zero key (logit 0) and a zero value, still in the softmax
                        logits.append(q.new_zeros(B, h))
                        values.append(v.new_zeros(B, h, d_v))
            p = torch.stack(logits, -1).softmax(-1)
            row.append((p.unsqueeze(-1) * torch.stack(values, -2)).sum(-2))
        rows_out.append(torch.stack(row, 2))
    return torch.stack(rows_out, 2)


def _inputs(shape, d_qk=4, d_v=3, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    B, h, H, W = shape
    out = [torch.randn(B, h, H, W, d, generator=g, dtype=dtype) for d in (d_qk, d_qk, d_v)]
    return [t.requires_grad_(grad) for t in out]


@pytest.mark.parametrize(("border", "H", "W", "kernel", "dil"), _case_params())
def test_matches_loop_definition_forward_and_grad(border, H, W, kernel, dil):
    q, k, v = _inputs((2, 2, H, W), grad=True)
    scale = 0.7
    expected = _naive(q, k, v, kernel, dil, scale, border)
    g_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (q, k, v), g_out)
    for backend in OURS:
        out = neighborhood_attention(q, k, v, kernel, dil, scale=scale, border=border, backend=backend)
        assert out.shape == (2, 2, H, W, 3)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12, msg=f"{backend} forward")
        grads = torch.autograd.grad(out, (q, k, v), g_out)
        for name, got, want in zip("qkv", grads, expected_grads):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=f"{backend} d{name}")


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize(("H", "W", "kernel", "dil"), [(7, 6, (3, 5), (2, 1)), (6, 9, (3, 1), (2, 3))])
def test_cpu_fast_gradcheck(border, H, W, kernel, dil):
    # The hand-written backward against finite differences, independent of any other implementation.
    q, k, v = _inputs((1, 2, H, W), d_qk=3, d_v=2, grad=True)

    def fn(q, k, v):
        return neighborhood_attention(q, k, v, kernel, dil, scale=0.6, border=border, backend="cpu_fast")

    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=True)


def test_borders_really_differ():
    # Guards the tests above against a definition in which the border rule is silently ignored.
    q, k, v = _inputs((1, 1, 6, 6))
    outs = {b: neighborhood_attention(q, k, v, (3, 3), scale=1.0, border=b, backend="cpu_fast") for b in BORDERS}
    interior = (slice(None), slice(None), slice(1, 5), slice(1, 5))
    for a in BORDERS:
        for b in BORDERS:
            torch.testing.assert_close(outs[a][interior], outs[b][interior])
            if a != b:
                assert not torch.allclose(outs[a], outs[b]), (a, b)


def test_kernel_one_returns_values():
    q, k, v = _inputs((2, 3, 5, 4))
    for backend in OURS:
        out = neighborhood_attention(q, k, v, (1, 1), (2, 3), scale=1.0, backend=backend)
        torch.testing.assert_close(out, v, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# border="zero" is DilateFormer's official formulation
# ---------------------------------------------------------------------------------------------------------


def _dilateformer_attention(q, k, v, head_dim, kernel, dilation, scale):
    """DilateFormer's DilateAttention on its own layout: (B, heads*head_dim, H, W) in, (B, H, W, C) out."""
    B, C, H, W = q.shape
    heads, kk = C // head_dim, kernel * kernel
    unfold = torch.nn.Unfold(kernel, dilation, dilation * (kernel - 1) // 2, 1)
    q = q.reshape(B, heads, head_dim, 1, H * W).permute(0, 1, 4, 3, 2)
    k = unfold(k).reshape(B, heads, head_dim, kk, H * W).permute(0, 1, 4, 2, 3)
    attn = ((q @ k) * scale).softmax(dim=-1)
    v = unfold(v).reshape(B, heads, head_dim, kk, H * W).permute(0, 1, 4, 3, 2)
    return (attn @ v).transpose(1, 2).reshape(B, H, W, C)


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_reference_is_dilateformer_formulation(dilation):
    B, heads, head_dim, H, W, kernel = 2, 3, 8, 9, 11, 3
    g = torch.Generator().manual_seed(dilation)
    q, k, v = (torch.randn(B, heads * head_dim, H, W, generator=g) for _ in range(3))
    expected = _dilateformer_attention(q, k, v, head_dim, kernel, dilation, head_dim**-0.5)

    def ours(t):  # (B, heads*head_dim, H, W) -> (B, heads, H, W, head_dim)
        return t.reshape(B, heads, head_dim, H, W).permute(0, 1, 3, 4, 2)

    out = neighborhood_attention(ours(q), ours(k), ours(v), kernel, dilation, scale=head_dim**-0.5)
    got = out.permute(0, 2, 3, 1, 4).reshape(B, H, W, heads * head_dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize(("kernel", "dilation"), [(3, 1), (3, 2), (3, 3), (7, 1), (7, 2)])
def test_cpu_fast_equals_reference_float32(border, kernel, dilation):
    q, k, v = _inputs((2, 3, 14, 15), d_qk=8, d_v=8, dtype=torch.float32, grad=True)
    grads = {}
    for backend in OURS:
        out = neighborhood_attention(q, k, v, kernel, dilation, scale=8**-0.5, border=border, backend=backend)
        g_out = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        grads[backend] = (out, *torch.autograd.grad(out, (q, k, v), g_out))
    for name, got, want in zip(("out", "dq", "dk", "dv"), grads["cpu_fast"], grads["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("border", BORDERS)
def test_low_precision_forward_and_backward(dtype, border):
    q64, k64, v64 = _inputs((2, 2, 8, 7), d_qk=8, d_v=8, grad=True)
    expected = neighborhood_attention(q64, k64, v64, (3, 3), (2, 1), scale=0.35, border=border)
    exp_grads = torch.autograd.grad(expected.sum(), (q64, k64, v64))
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q64, k64, v64))
    out = neighborhood_attention(q, k, v, (3, 3), (2, 1), scale=0.35, border=border, backend="cpu_fast")
    assert out.dtype == dtype
    out.sum().backward()
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    for t, want in zip((q, k, v), exp_grads):
        assert t.grad.dtype == dtype
        torch.testing.assert_close(t.grad.double(), want, rtol=tol, atol=4 * tol)


@settings(max_examples=30, deadline=None)
@given(
    border=st.sampled_from(BORDERS),
    H=st.integers(1, 9),
    W=st.integers(1, 9),
    kh=st.sampled_from([1, 3, 5]),
    kw=st.sampled_from([1, 3, 5]),
    dh=st.integers(1, 3),
    dw=st.integers(1, 3),
    d_v=st.integers(1, 5),
)
def test_cpu_fast_equals_reference_property(border, H, W, kh, kw, dh, dw, d_v):
    if border == "inward" and not _fits_inward(H, W, (kh, kw), (dh, dw)):
        return
    q, k, v = _inputs((1, 2, H, W), d_qk=3, d_v=d_v, grad=True)
    results = []
    for backend in OURS:
        out = neighborhood_attention(q, k, v, (kh, kw), (dh, dw), scale=0.5, border=border, backend=backend)
        results.append((out, *torch.autograd.grad(out.sum(), (q, k, v))))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# natten parity (skips without natten; CPU: forward only, natten's flex path has no backward there)
# ---------------------------------------------------------------------------------------------------------


def _need_natten() -> None:
    # exc_type=ImportError: a natten that is present but fails to import (torch mismatch) also skips.
    pytest.importorskip(
        "natten",
        reason="natten not importable (pip install --no-build-isolation natten)",
        exc_type=ImportError,
    )


NATTEN_CASES = [
    ((9, 11), (3, 3), (1, 1)),
    ((9, 11), (3, 5), (2, 2)),
    ((10, 7), (5, 3), (2, 2)),
    ((12, 12), (3, 3), (3, 4)),
    ((7, 7), (7, 7), (1, 1)),  # window == map: natten's self-attention fast path
]


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize(("size", "kernel", "dil"), NATTEN_CASES)
def test_natten_forward_parity_cpu(size, kernel, dil):
    _need_natten()
    q, k, v = _inputs((2, 3, *size), d_qk=8, d_v=8, dtype=torch.float32)
    want = neighborhood_attention(q, k, v, kernel, dil, scale=0.3, border="inward", backend="cpu_fast")
    got = neighborhood_attention(q, k, v, kernel, dil, scale=0.3, border="inward", backend="natten")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_natten_cpu_refuses_grad():
    _need_natten()
    q, k, v = _inputs((1, 1, 6, 6), d_qk=8, d_v=8, dtype=torch.float32, grad=True)
    with pytest.raises(BackendUnavailableError, match="no backward"):
        neighborhood_attention(q, k, v, (3, 3), scale=1.0, border="inward", backend="natten")
    with torch.no_grad():  # forward alone is fine
        neighborhood_attention(q, k, v, (3, 3), scale=1.0, border="inward", backend="natten")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("size", "kernel", "dil"), NATTEN_CASES)
def test_natten_forward_backward_parity_cuda(size, kernel, dil):
    _need_natten()
    q, k, v = (t.cuda().requires_grad_() for t in _inputs((2, 3, *size), d_qk=32, d_v=32, dtype=torch.float32))
    results = []
    for backend in ("cpu_fast", "natten"):
        out = neighborhood_attention(q, k, v, kernel, dil, scale=0.2, border="inward", backend=backend)
        g_out = torch.linspace(-1, 1, out.numel(), device="cuda").reshape(out.shape)
        results.append((out, *torch.autograd.grad(out, (q, k, v), g_out)))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_natten_unavailable_is_reported(monkeypatch, fresh_dispatch):
    monkeypatch.setattr(nb, "_natten_tried", True)
    monkeypatch.setattr(nb, "_natten_error", "natten is not importable (ImportError: test)")
    assert available_backends("cpu") == {
        "reference": None,
        "cpu_fast": None,
        "natten": "natten is not importable (ImportError: test)",
    }
    q, k, v = _inputs((1, 1, 6, 6), dtype=torch.float32)
    with pytest.raises(BackendUnavailableError, match="not importable"):
        neighborhood_attention(q, k, v, (3, 3), scale=1.0, border="inward", backend="natten")
    # "auto" never needs natten (it is not a fast path on CPU): it takes cpu_fast.
    out = neighborhood_attention(q, k, v, (3, 3), scale=1.0, border="inward")
    want = neighborhood_attention(q, k, v, (3, 3), scale=1.0, border="inward", backend="reference")
    torch.testing.assert_close(out, want)


def test_natten_availability_by_device(monkeypatch, fresh_dispatch):
    class FakeNatten:
        HAS_LIBNATTEN = False

    monkeypatch.setattr(nb, "_natten_tried", True)
    monkeypatch.setattr(nb, "_natten_error", None)
    monkeypatch.setattr(nb, "_natten_module", FakeNatten)
    assert "forward only" in available_backends("cpu")["natten"]
    assert "without libnatten" in available_backends("cuda")["natten"]
    assert "no attention paths are known for device type 'mps'" in available_backends("mps")["natten"]
    monkeypatch.setattr(FakeNatten, "HAS_LIBNATTEN", True)
    # with libnatten, availability is the kernel running once on the device: a fake natten cannot run
    if not torch.cuda.is_available():
        assert "its kernel failed on a tiny input" in available_backends("cuda")["natten"]
    assert available_backends("cpu")["reference"] is None and available_backends("cpu")["cpu_fast"] is None


def test_auto_follows_the_shape_table_on_cpu(monkeypatch):
    # DilateFormer-T's stage-2 calls (28 x 28, d = 24): the measured table puts cpu_fast first; on a 2 x 2 map
    # with many heads (zoo_s32's last stage) the unfold reference is faster
    assert backends.choose_backend("auto", torch.zeros(1, 8, 2, 2, 12), "zero", (3, 3)) == "reference"
    calls = []
    real = nb._reference_na2d
    monkeypatch.setattr(nb, "_reference_na2d", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = (torch.randn(1, 2, 28, 28, 24) for _ in range(3))
    for border in BORDERS:
        assert backends.choose_backend("auto", q, border, (3, 3)) == "cpu_fast"
        with FlopCounterMode(display=False) as counter:
            neighborhood_attention(q, k, v, (3, 3), scale=1.0, border=border)
        assert torch.ops.attn_zoo.na2d in counter.get_flop_counts()["Global"]
    assert calls == []


# ---------------------------------------------------------------------------------------------------------
# FLOP counting, the custom op's registrations, determinism
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", OURS)
@pytest.mark.parametrize("border", BORDERS)
def test_flop_counter_matches_formula(backend, border):
    B, h, H, W, d_qk, d_v, kernel = 2, 3, 8, 9, 4, 5, (3, 5)
    q, k, v = _inputs((B, h, H, W), d_qk=d_qk, d_v=d_v, dtype=torch.float32, grad=True)
    macs = neighborhood_attention_macs(B, h, H, W, kernel, d_qk, d_v)
    assert macs == B * h * H * W * 15 * (d_qk + d_v)
    with FlopCounterMode(display=False) as counter:
        out = neighborhood_attention(q, k, v, kernel, (2, 1), scale=0.5, border=border, backend=backend)
        forward = counter.get_total_flops()
        out.sum().backward()
    assert forward == 2 * macs
    assert counter.get_total_flops() - forward == 4 * macs


@pytest.mark.parametrize("border", BORDERS)
def test_custom_op_registrations(border):
    # Schema, fake (meta) kernel, autograd registration and AOT dispatch, as torch.compile needs them.
    q, k, v = _inputs((2, 2, 7, 6), d_qk=3, d_v=2, dtype=torch.float32, grad=True)
    args = (3, 5, 2, 1, 0.5, border)
    torch.library.opcheck(torch.ops.attn_zoo.na2d.default, (q, k, v, *args))
    # The backward op is first-order only (no double backward), so it is checked on detached inputs.
    q, k, v = (t.detach() for t in (q, k, v))
    _, probs = torch.ops.attn_zoo.na2d(q, k, v, *args)
    grad_out = torch.randn(2, 2, 7, 6, 2)
    torch.library.opcheck(torch.ops.attn_zoo.na2d_backward.default, (grad_out, q, k, v, probs, *args))


@pytest.mark.parametrize("layout", ["contiguous", "heads_last_views"])
def test_torch_compile_fullgraph(layout):
    # One graph through the custom ops, forward and backward. inductor, because it checks the real
    # kernels' output strides against the fake ones (aot_eager does not). "heads_last_views": q, k, v are
    # permuted views of (B, H, W, heads, d) tensors, as MSA-Conv and MSDA hand them over (a gradient that
    # kept q's strides failed that check when msa_conv's training step was compiled).
    q, k, v = _inputs((2, 2, 9, 8), d_qk=4, d_v=4, dtype=torch.float32, grad=True)
    if layout == "heads_last_views":
        q, k, v = (t.detach().permute(0, 2, 3, 1, 4).contiguous().requires_grad_() for t in (q, k, v))

    def fn(q, k, v):
        if layout == "heads_last_views":
            q, k, v = (t.permute(0, 3, 1, 2, 4) for t in (q, k, v))
        return neighborhood_attention(q, k, v, (3, 3), (2, 2), scale=0.5, backend="cpu_fast")

    want = fn(q, k, v)
    got = torch.compile(fn, backend="inductor", fullgraph=True)(q, k, v)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.sum(), (q, k, v)), torch.autograd.grad(want.sum(), (q, k, v))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", OURS)
@pytest.mark.parametrize("border", BORDERS)
def test_deterministic(backend, border):
    runs = []
    for _ in range(2):
        q, k, v = _inputs((2, 3, 12, 13), d_qk=8, d_v=8, dtype=torch.float32, seed=3, grad=True)
        out = neighborhood_attention(q, k, v, (3, 3), (2, 2), scale=0.3, border=border, backend=backend)
        out.square().sum().backward()
        runs.append((out, q.grad, k.grad, v.grad))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_saved_memory_is_probabilities_not_copies():
    # cpu_fast keeps q, k, v (the caller's) and the (k*k, tokens) probabilities: nothing of size k*k*d.
    q, k, v = _inputs((2, 3, 10, 10), d_qk=8, d_v=8, dtype=torch.float32, grad=True)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        neighborhood_attention(q, k, v, (7, 7), scale=0.3, backend="cpu_fast")
    extra = [t for t in saved if not any(t is x for x in (q, k, v))]
    assert sum(t.numel() for t in extra) == 49 * 2 * 3 * 10 * 10


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


def _good():
    return _inputs((1, 2, 6, 6), dtype=torch.float32)


def _call(q=None, k=None, v=None, kernel=(3, 3), dil=(1, 1), **kw):
    gq, gk, gv = _good()
    kw.setdefault("scale", 1.0)
    return neighborhood_attention(
        gq if q is None else q, gk if k is None else k, gv if v is None else v, kernel, dil, **kw
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"q": torch.zeros(2, 6, 6, 4)}, r"q must be 5-D \(B, heads, H, W, d\), got 4-D"),
        ({"k": torch.zeros(1, 2, 6, 5, 4)}, r"k must have the shape of q"),
        ({"v": torch.zeros(1, 2, 5, 6, 3)}, r"v must match q in \(B, heads, H, W\)"),
        ({"v": torch.zeros(1, 2, 6, 6, 3, dtype=torch.int64)}, r"v must be float16, bfloat16, float32"),
        ({"v": torch.zeros(1, 2, 6, 6, 3, dtype=torch.float64)}, r"share one dtype"),
        ({"kernel": (3, 4)}, r"kernel_size must be odd and >= 1"),
        ({"kernel": 0}, r"kernel_size must be odd and >= 1"),
        ({"kernel": (3, 3, 3)}, r"kernel_size must be an int or a pair of ints"),
        ({"kernel": (3.0, 3)}, r"kernel_size must be an int or a pair of ints"),
        ({"dil": (1, 0)}, r"dilation must be >= 1"),
        ({"scale": float("nan")}, r"scale must be a finite real number"),
        ({"dil": (2, 3), "border": "inward"}, r"H >= k_h \* d_h and W >= k_w \* d_w"),
        ({"border": "zero", "backend": "natten"}, r'implements only border="inward"'),
        ({"kernel": (3, 1), "border": "inward", "backend": "natten"}, r"kernel dimension >= 2"),
    ],
)
def test_bad_input_raises_mechanism_input_error(kwargs, match):
    with pytest.raises(MechanismInputError, match=match) as info:
        _call(**kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AttnZooError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"border": "reflect"},
            r"unknown neighbourhood-attention border 'reflect'; allowed: inward, masked, zero",
        ),
        ({"backend": "cuda"}, r"unknown neighbourhood-attention backend 'cuda'; allowed: auto, cpu_fast"),
    ],
)
def test_unknown_names(kwargs, match):
    with pytest.raises(UnknownNameError, match=match):
        _call(**kwargs)


def test_zero_and_masked_accept_windows_wider_than_the_map():
    q, k, v = _inputs((1, 1, 2, 3))
    for border in ("zero", "masked"):
        out = neighborhood_attention(q, k, v, (5, 7), (3, 3), scale=1.0, border=border, backend="cpu_fast")
        assert torch.isfinite(out).all()
    # masked with every other neighbour outside: only the query itself remains, so out == v.
    out = neighborhood_attention(q, k, v, (3, 3), (3, 3), scale=1.0, border="masked")
    torch.testing.assert_close(out, v)
    # zero: the eight outside neighbours share the softmax with logit 0 and value 0.
    out = neighborhood_attention(q, k, v, (3, 3), (3, 3), scale=1.0, border="zero")
    self_logit = (q * k).sum(-1, keepdim=True)
    torch.testing.assert_close(out, v * torch.exp(self_logit) / (torch.exp(self_logit) + 8))


def test_macs_formula_accepts_int_kernel():
    assert neighborhood_attention_macs(8, 3, 56, 56, 3, 24, 24) == 8 * 3 * 56 * 56 * 9 * 48
    assert neighborhood_attention_macs(1, 1, 1, 1, (5, 1), 2, 3) == 25


def test_reference_uses_unfold(monkeypatch):
    # The reference backend is the unfold formulation for zero/masked borders (parity baseline).
    calls = []
    real = F.unfold
    monkeypatch.setattr(F, "unfold", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = _good()
    neighborhood_attention(q, k, v, (3, 3), scale=1.0, backend="reference")
    assert len(calls) == 2
