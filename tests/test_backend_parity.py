"""Every attention path of every mechanism equals its reference path, forward and backward.

One module per case (identical weights); the only thing switched between the two runs is ``backend``.
Compared in float32: outputs, the gradient of the input (and of GC-ViT's global query) and of every
parameter, with ``torch.testing.assert_close(rtol=1e-5, atol=1e-5)`` on outputs and ``rtol=1e-4,
atol=1e-5`` on gradients (they sum over the batch, the windows and the neighbours, so their rounding
differs more between paths that sum in a different order). On CUDA both are 1e-4.

Cases: sizes that are and are not multiples of the window (padding), shift on/off, stage maps smaller than
the window (the window clamps), dilations 1..3, the three neighbourhood borders, batch 2, several heads.
A path that cannot run here skips with the registry's reason. Forward-only paths (natten and
flex_attention on CPU) are compared forward only; their backward case skips with the reason.

bfloat16: one case per mechanism, every path (``reference`` too) run under ``torch.autocast(bfloat16)`` (how
``attn-zoo bench --amp`` and training with ``amp`` run), each tensor compared with the float32 ``reference``
of the same module by its relative error ``||got - want|| / ||want||``. bf16 keeps 8 bits of mantissa, and
under autocast the projections round too, so the bound is relative to the error of the ``reference`` path
under the same autocast: at most twice that plus 1e-3 (gradients that nearly cancel, such as the output
bias's under the +-1 output weights, have a large relative error on every path), and below 2e-2 for the
output. Tensors near zero in exact arithmetic are measured against an RMS floor of 1e-2.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import attn_zoo
from attn_zoo.errors import KnobError
from attn_zoo.layers.backends import runs_reason, unavailable_reason
from attn_zoo.mechanisms.gcvit import GCViTAttention
from attn_zoo.registry import get_mechanism

# natten 0.21.7's CPU path calls flex_attention(return_lse=...), which torch 2.15 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:return_lse is deprecated:FutureWarning")

# (id, mechanism, dim, heads, knobs, feat_size passed at construction, map size (H, W))
CASES: list[tuple[str, str, int, int, dict[str, Any], tuple[int, int] | None, tuple[int, int]]] = [
    ("global", "global", 16, 2, {}, None, (5, 7)),
    ("swin-wmsa", "swin", 16, 2, {"window": 4}, None, (8, 8)),
    ("swin-swmsa-pad", "swin", 16, 2, {"window": 4, "shift": True}, None, (6, 9)),
    ("swin-swmsa-maskpad", "swin", 16, 2, {"window": 4, "shift": True, "mask_padding": True}, None, (7, 5)),
    ("swin-clamped", "swin", 16, 2, {"window": 7, "shift": True}, (3, 5), (3, 5)),
    ("ssa-r2", "ssa", 16, 2, {"r_n": 2, "r_c": 1.25}, None, (7, 9)),
    ("ssa-r3-pad", "ssa", 16, 2, {"r_n": 3, "remainder": "pad"}, None, (4, 5)),
    ("ssa-r1", "ssa", 16, 2, {"r_n": 1}, None, (5, 6)),
    ("iwsa", "iwsa", 16, 2, {"window": 4}, None, (8, 8)),
    ("iwsa-pad-masked", "iwsa", 16, 2, {"window": 4}, None, (6, 9)),
    ("iwsa-clamped", "iwsa", 16, 2, {"window": 7}, None, (3, 5)),
    ("gcvit-local-pad", "gcvit", 16, 2, {"window": 4}, (9, 10), (9, 10)),
    ("gcvit-global", "gcvit", 16, 2, {"window": 4, "global_query": True}, (8, 8), (8, 8)),
    ("msda-zero", "msda", 24, 3, {"dilations": (1, 2, 3)}, None, (9, 11)),
    ("msda-masked-small", "msda", 24, 3, {"dilations": (1, 2, 3), "border": "masked"}, None, (4, 5)),
    ("msda-inward", "msda", 24, 3, {"dilations": (1, 2, 3), "border": "inward"}, None, (9, 11)),
    ("msda-inward-k5", "msda", 16, 2, {"kernel": 5, "dilations": (1, 2), "border": "inward"}, None, (10, 12)),
    ("msa_conv-zero-d2", "msa_conv", 16, 2, {"dilation": 2}, None, (6, 7)),
    ("msa_conv-inward-d3", "msa_conv", 16, 2, {"dilation": 3, "border": "inward"}, None, (9, 10)),
    ("msa_conv-shift-pool", "msa_conv", 16, 4, {"shift": 1, "inter_pool": 2, "border": "masked"}, None, (7, 8)),
]
BATCH = 2
DEVICES = ["cpu", "cuda"]
PASSES = ["forward", "backward"]


def _params() -> list:
    out = []
    for case in CASES:
        for backend in get_mechanism(case[1]).backends:
            if backend == "reference":
                continue
            for device in DEVICES:
                for pass_ in PASSES:
                    out.append(pytest.param(case, backend, device, pass_, id=f"{case[0]}-{backend}-{device}-{pass_}"))
    return out


# every mechanism; shifted and padded windows, GC-ViT's two kinds, the inward border (natten's)
BF16_IDS = ("global", "swin-swmsa-pad", "ssa-r2", "iwsa-pad-masked", "gcvit-local-pad", "gcvit-global")
BF16_IDS += ("msda-inward", "msa_conv-inward-d3")
BF16_CASES = [case for case in CASES if case[0] in BF16_IDS]
BF16_OUTPUT_TOL = 2e-2


def _bf16_params() -> list:
    out = []
    for case in BF16_CASES:
        for backend in get_mechanism(case[1]).backends:
            for device in DEVICES:
                for pass_ in PASSES:
                    out.append(
                        pytest.param(case, backend, device, pass_, id=f"{case[0]}-{backend}-{device}-bf16-{pass_}")
                    )
    return out


def _tolerances(device: str, pass_: str) -> dict[str, float]:
    if device == "cuda":
        return {"rtol": 1e-4, "atol": 1e-4}
    return {"rtol": 1e-5 if pass_ == "forward" else 1e-4, "atol": 1e-5}


def _build(case: tuple, device: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]:
    _, name, dim, heads, knobs, feat_size, (H, W) = case
    torch.manual_seed(0)
    mixer = attn_zoo.create_mechanism(name, dim, heads, feat_size=feat_size, **knobs).to(device)
    with torch.no_grad():  # non-trivial values everywhere (some tables start at zero)
        for p in mixer.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(BATCH, H, W, dim, device=device)
    context = None
    if isinstance(mixer, GCViTAttention) and mixer.global_query:
        M = mixer.window[0]
        context = torch.randn(BATCH, M, M, dim, device=device)
    return mixer, x, context


def _run(mixer: torch.nn.Module, x: torch.Tensor, context: torch.Tensor | None, backward: bool) -> list:
    """Output, then (with ``backward``) the gradients of x, the context and every parameter."""
    mixer.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(backward)
    ci = context.clone().requires_grad_(backward) if context is not None else None
    with torch.set_grad_enabled(backward):
        out = mixer(xi, ci)
    if not backward:
        return [out]
    weights = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)  # every output matters
    (out * weights).sum().backward()
    grads = [xi.grad, *([ci.grad] if ci is not None else [])]
    return [out.detach(), *grads, *(p.grad for p in mixer.parameters())]


def _skip_unless_it_runs(backend: str, device: str, pass_: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    reason = runs_reason(backend, device)
    if reason is not None:
        pytest.skip(f"{backend} cannot run on {device}: {reason}")
    forward_only = unavailable_reason(backend, device) is not None  # runs here, but only as a parity check
    if pass_ == "backward" and forward_only:
        pytest.skip(f"{backend} on {device} is forward only: {unavailable_reason(backend, device)}")


def _names(mixer: torch.nn.Module, context: torch.Tensor | None, pass_: str) -> list[str]:
    names = ["output"]
    if pass_ == "backward":
        names += ["d input", *(["d context"] if context is not None else [])]
        names += [f"d {n}" for n, _ in mixer.named_parameters()]
    return names


@pytest.mark.parametrize(("case", "backend", "device", "pass_"), _params())
def test_path_equals_reference(case: tuple, backend: str, device: str, pass_: str) -> None:
    _skip_unless_it_runs(backend, device, pass_)
    mixer, x, context = _build(case, device)
    try:
        mixer.set_backend(backend)
    except KnobError as exc:  # e.g. natten only implements the inward border
        pytest.skip(f"{backend} does not implement these knobs: {exc}")
    mixer.set_backend("reference")
    expected = _run(mixer, x, context, backward=pass_ == "backward")
    assert mixer.last_backend == "reference"
    mixer.set_backend(backend)
    got = _run(mixer, x, context, backward=pass_ == "backward")
    assert mixer.last_backend == backend
    tol = _tolerances(device, pass_)
    names = _names(mixer, context, pass_)
    assert len(names) == len(expected) == len(got)
    for name, a, b in zip(names, got, expected):
        assert (a is None) == (b is None), f"{name}: gradient on one path only"
        if a is not None:
            torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{backend} vs reference, {name}: {m}")


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    floor = 1e-2 * want.numel() ** 0.5  # an RMS of 1e-2: for gradients that are ~0 in exact arithmetic
    return ((got - want).norm() / max(want.norm().item(), floor)).item()


@pytest.mark.parametrize(("case", "backend", "device", "pass_"), _bf16_params())
def test_path_under_bf16_autocast_is_close_to_the_float32_reference(
    case: tuple, backend: str, device: str, pass_: str
) -> None:
    _skip_unless_it_runs(backend, device, pass_)
    mixer, x, context = _build(case, device)
    try:
        mixer.set_backend(backend)
    except KnobError as exc:
        pytest.skip(f"{backend} does not implement these knobs: {exc}")
    backward = pass_ == "backward"
    mixer.set_backend("reference")
    expected = _run(mixer, x, context, backward)
    with torch.autocast(device, dtype=torch.bfloat16):
        baseline = _run(mixer, x, context, backward)  # what bf16 alone costs, on the reference path
    mixer.set_backend(backend)
    with torch.autocast(device, dtype=torch.bfloat16):
        got = _run(mixer, x, context, backward)
    assert mixer.last_backend == backend
    assert got[0].dtype == torch.bfloat16  # autocast reached the mixer's matmuls
    names = _names(mixer, context, pass_)
    assert len(names) == len(expected) == len(got) == len(baseline)
    for name, a, b, base in zip(names, got, expected, baseline):
        assert (a is None) == (b is None), f"{name}: gradient on one path only"
        if a is None:
            continue
        err, base_err = _relative_error(a, b), _relative_error(base, b)
        bound = min(2 * base_err + 1e-3, BF16_OUTPUT_TOL) if name == "output" else 2 * base_err + 1e-3
        assert err <= bound, (
            f"{backend} under bf16 autocast vs float32 reference, {name}: relative error {err:.1e} > {bound:.1e} "
            f"(reference under bf16: {base_err:.1e})"
        )


def test_every_mechanism_has_a_reference_and_its_fast_paths():
    offered = {name: spec.backends for name, spec in attn_zoo.list_mechanisms().items()}
    dense = {"global": (), "ssa": (), "swin": ("flex",), "iwsa": ("flex",), "gcvit": ("flex",)}
    for name, extra in dense.items():
        assert {"reference", "sdpa", "xformers", *extra} == set(offered[name]), name
    for name in ("msda", "msa_conv"):
        assert set(offered[name]) == {"reference", "cpu_fast", "natten"}, name
    assert {c[1] for c in CASES} == set(dense) | {"msda", "msa_conv"}  # every built-in mechanism is covered


def test_auto_on_cpu_picks_a_path_that_runs_and_records_it():
    for case in CASES:
        mixer, x, context = _build(case, "cpu")
        with torch.no_grad():
            mixer(x, context)
        assert mixer.last_backend is not None and unavailable_reason(mixer.last_backend, "cpu") is None, case[0]


def test_flex_pads_small_heads_without_changing_the_result(monkeypatch):
    """flex's CUDA kernel takes head dims >= 16; the zero padding it gets there changes nothing (checked on CPU)."""
    from attn_zoo.layers import attention

    q, k, v = (torch.randn(2, 4, 3, 16, 8) for _ in range(3))  # (B, nW, heads, N, d = 8)
    bias = torch.randn(1, 4, 3, 16, 16)
    want = attention.attention_reference(q, k, v, scale=0.3, bias=bias)
    monkeypatch.setitem(attention.FLEX_MIN_HEAD_DIM, "cpu", 16)
    got = attention.attention_flex(q, k, v, scale=0.3, bias=bias)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got4 = attention.attention_flex(q[:, 0], k[:, 0], v[:, 0], scale=0.3, bias=bias[:, 0])
    torch.testing.assert_close(got4, want[:, 0], rtol=1e-5, atol=1e-5)


def test_flex_under_a_flop_counter_counts_the_reference_path():
    """Under FlopCounterMode (``attn-zoo bench``/``count``) flex runs as ``reference``: compiled flex fails
    under a dispatch mode on CUDA, and the count is of the same attention."""
    from torch.utils.flop_counter import FlopCounterMode

    mixer = attn_zoo.create_mechanism("swin", 16, 2, window=4)
    x = torch.randn(1, 8, 8, 16)
    counts = {}
    for backend in ("reference", "flex"):
        mixer.set_backend(backend)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            mixer(x)
        counts[backend] = counter.get_total_flops()
    assert counts["flex"] == counts["reference"] > 0
