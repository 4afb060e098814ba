"""2-D dilated neighbourhood attention with interchangeable backends (DilateFormer's MSDA, TiC's MSA-Conv).

The one public op, :func:`neighborhood_attention`, takes ``(B, heads, H, W, d)`` tensors and lets every
query attend to a ``k_h x k_w`` window of keys around it, sampled every ``dilation`` pixels. Three border
rules are offered, because the mechanisms we reproduce disagree on what happens at the image edge:

* ``"zero"`` - DilateFormer's official code (``nn.Unfold`` with zero padding): out-of-image neighbours are
  zero vectors that still take part in the softmax (logit exactly 0, value 0).
* ``"masked"`` - out-of-image neighbours are left out of the softmax.
* ``"inward"`` - neighbourhood attention as defined by NAT/DiNAT/natten: the window slides inward at the
  border so every query has ``k_h * k_w`` real neighbours.

Backends:

* ``"reference"`` - the readable unfold formulation of the official codes (``k_h * k_w`` copies of K and
  V, then a batched matmul). It is the parity baseline and the speed baseline.
* ``"cpu_fast"`` - a pure-torch path that loops over the ``k_h * k_w`` offsets on shifted *views* of the
  zero-padded K/V (gathers for ``"inward"``), with a hand-written backward. It never materialises the
  ``k*k`` copies; what it saves for backward is the ``(k*k, tokens)`` probabilities. It is exposed as the
  ``torch.library`` custom ops ``attn_zoo::na2d`` / ``attn_zoo::na2d_backward``, which carry FLOP
  formulas for ``torch.utils.flop_counter.FlopCounterMode``. Runs on any device.
* ``"natten"`` - natten's ``na2d`` (natten 0.21.7), ``border="inward"`` only, imported lazily.
* ``"auto"`` - the dispatch table's choice for the call (:func:`attn_zoo.layers.backends.select`): a path that
  ran here once and that the measured shape table puts first (natten on CUDA only for ``"inward"`` with its
  compiled kernels). Nothing falls back silently: a path that cannot compute a call is an error.
"""

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from attn_zoo.errors import BackendUnavailableError, KnobError, MechanismInputError, UnknownNameError

__all__ = [
    "BACKENDS",
    "BORDERS",
    "neighborhood_attention_macs",
]

BORDERS: tuple[str, ...] = ("zero", "masked", "inward")
BACKENDS: tuple[str, ...] = ("auto", "reference", "cpu_fast", "natten")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NATTEN_VERSION = "0.21.7"
_NATTEN_INSTALL = f"pip install --no-build-isolation natten=={_NATTEN_VERSION}"


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


def neighborhood_attention_macs(
    B: int, heads: int, H: int, W: int, kernel_size: tuple[int, int] | int, d_qk: int, d_v: int
) -> int:
    """Multiply-accumulates of one forward call: ``B * heads * H * W * k_h * k_w * (d_qk + d_v)``.

    ``k_h * k_w * d_qk`` for the logits of each query and ``k_h * k_w * d_v`` for the weighted sum of
    values; softmax and scaling are not counted (as in fvcore and FlopCounterMode). FlopCounterMode
    reports FLOPs = 2 * MACs; the backward is twice the forward.
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    return B * heads * H * W * kh * kw * (d_qk + d_v)


# ---------------------------------------------------------------------------------------------------------
# Validation and backend choice
# ---------------------------------------------------------------------------------------------------------


def _pair(value: object, name: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair; anything else is a MechanismInputError."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    ):
        return (int(value[0]), int(value[1]))
    raise MechanismInputError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")


def _validate(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: object,
    dilation: object,
    scale: object,
    border: str,
    backend: str,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Check every argument once, so the backends can assume well-formed input."""
    if border not in BORDERS:
        raise UnknownNameError("neighbourhood-attention border", border, BORDERS)
    if backend not in BACKENDS:
        raise UnknownNameError("neighbourhood-attention backend", backend, BACKENDS)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise MechanismInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 5:
            raise MechanismInputError(f"{name} must be 5-D (B, heads, H, W, d), got {t.dim()}-D shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise MechanismInputError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if k.shape != q.shape:
        raise MechanismInputError(
            f"k must have the shape of q (B, heads, H, W, d_qk): q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if v.shape[:4] != q.shape[:4]:
        raise MechanismInputError(
            "v must match q in (B, heads, H, W) (only its last dimension d_v may differ): "
            f"q {tuple(q.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise MechanismInputError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise MechanismInputError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    kernel = _pair(kernel_size, "kernel_size")
    if any(x < 1 or x % 2 == 0 for x in kernel):
        raise MechanismInputError(
            f"kernel_size must be odd and >= 1 in both dimensions (a centred window), got {kernel}"
        )
    dil = _pair(dilation, "dilation")
    if any(x < 1 for x in dil):
        raise MechanismInputError(f"dilation must be >= 1 in both dimensions, got {dil}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise MechanismInputError(f"scale must be a finite real number, got {scale!r}")
    H, W = q.shape[2], q.shape[3]
    if border == "inward" and (kernel[0] * dil[0] > H or kernel[1] * dil[1] > W):
        raise MechanismInputError(
            'border="inward" needs H >= k_h * d_h and W >= k_w * d_w (each dilation sub-grid must hold '
            f"a whole window), got H, W = {H}, {W} with kernel {kernel} and dilation {dil}; "
            'use border="zero" or "masked", or a smaller kernel/dilation'
        )
    return kernel, dil


def na_call(q: Tensor, border: str, kernel: Sequence[int]) -> dict[str, object]:
    """What the shape table keys a neighbourhood call on: tokens, window, head width, sequences, border, grad."""
    B, heads, H, W, d = q.shape
    return {
        "n_q": H * W,
        "n_k": kernel[0] * kernel[1],
        "head_dim": d,
        "seqs": B * heads,
        "border": border,
        "kernel": tuple(kernel),
        "grad": torch.is_grad_enabled() and q.requires_grad,
    }


def check_mixer_backend(mechanism: str, backend: str, border: str, kernel: object) -> None:
    """A mixer's forced ``backend`` against its knobs, before any compute: natten needs ``border="inward"``
    and every kernel side >= 2. Raises ``KnobError`` naming the mechanism and the backends that fit."""
    if backend != "natten":
        return
    sides = _pair(kernel, "kernel")
    if border != "inward" or min(sides) < 2:
        got = f"border={border!r}" if border != "inward" else f"kernel {sides}"
        raise KnobError(
            f"mechanism {mechanism!r}: backend 'natten' implements only border='inward' (natten shifts windows "
            f"inward) with every kernel side >= 2, got {got}; use backend 'cpu_fast' or 'reference'"
        )


def _check_natten_call(border: str, kernel: tuple[int, int]) -> None:
    if border != "inward":
        raise MechanismInputError(
            f'backend="natten" implements only border="inward" (natten shifts windows inward), got border={border!r}'
        )
    if min(kernel) < 2:
        raise MechanismInputError(f"backend='natten' needs every kernel dimension >= 2 (natten's rule), got {kernel}")


# ---------------------------------------------------------------------------------------------------------
# Index helpers shared by the backends
# ---------------------------------------------------------------------------------------------------------


def _centred_axis_index(n: int, k: int, d: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Neighbour coordinates for the zero/masked borders along one axis.

    Returns ``(idx, valid)``, both ``(k, n)``: ``idx[a, x] = x + (a - r) * d`` and whether it lies in
    ``[0, n)``.
    """
    r = (k - 1) // 2
    x = torch.arange(n, device=device)
    idx = x[None, :] + (torch.arange(k, device=device)[:, None] - r) * d
    return idx, (idx >= 0) & (idx < n)


def _inward_axis_index(n: int, k: int, d: int, device: torch.device) -> Tensor:
    """Neighbour coordinates for ``border="inward"`` along one axis, ``(k, n)``, natten's definition.

    Position ``x`` belongs to sub-grid ``g = x % d`` at sub-grid index ``x // d``; that sub-grid holds
    ``n_g = ceil((n - g) / d)`` positions. The window centre is clamped to ``[r, n_g - 1 - r]`` so the
    window stays inside the sub-grid, and neighbour ``a`` is ``(centre + a - r) * d + g``. Needs
    ``n >= k * d`` (then every ``n_g >= k``).
    """
    r = (k - 1) // 2
    x = torch.arange(n, device=device)
    g = x % d
    n_g = (n - g + d - 1) // d
    centre = torch.minimum(torch.clamp(x // d, min=r), n_g - 1 - r)
    return (centre[None, :] + torch.arange(k, device=device)[:, None] - r) * d + g[None, :]


# ---------------------------------------------------------------------------------------------------------
# Backend "reference": the unfold formulation of the official codes
# ---------------------------------------------------------------------------------------------------------


def _reference_na2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel: tuple[int, int],
    dil: tuple[int, int],
    scale: float,
    border: str,
) -> Tensor:
    """Materialise the ``k_h * k_w`` neighbours of every query, then two batched matmuls.

    This is DilateFormer's ``DilateAttention`` written for ``(B, heads, H, W, d)`` tensors: for the
    zero/masked borders ``F.unfold`` with zero padding ``d * (k - 1) / 2`` gathers the neighbours (exactly
    the official code); ``"inward"`` gathers them with an index, which unfold cannot express. Plain
    autograd provides the backward; FlopCounterMode counts the two matmuls.
    """
    B, h, H, W, d_qk = q.shape
    d_v = v.shape[-1]
    kk, N = kernel[0] * kernel[1], H * W
    q_rows = q.reshape(B, h, N, 1, d_qk)
    if border == "inward":
        rows = _inward_axis_index(H, kernel[0], dil[0], q.device).t()  # (H, k_h)
        cols = _inward_axis_index(W, kernel[1], dil[1], q.device).t()  # (W, k_w)
        # Broadcast (H, 1, k_h, 1) against (1, W, 1, k_w): one (row, col) pair per query and neighbour.
        r_idx, c_idx = rows[:, None, :, None], cols[None, :, None, :]
        k_nb = k[:, :, r_idx, c_idx].reshape(B, h, N, kk, d_qk).transpose(-1, -2)  # (B, h, N, d_qk, kk)
        v_nb = v[:, :, r_idx, c_idx].reshape(B, h, N, kk, d_v)  # (B, h, N, kk, d_v)
        logits = (q_rows @ k_nb) * scale  # (B, h, N, 1, kk)
    else:
        padding = (dil[0] * (kernel[0] - 1) // 2, dil[1] * (kernel[1] - 1) // 2)

        def unfold(t: Tensor) -> Tensor:  # (B, h, H, W, c) -> (B, h, c, kk, N), zero padded
            c = t.shape[-1]
            channels_first = t.permute(0, 1, 4, 2, 3).reshape(B, h * c, H, W)
            return F.unfold(channels_first, kernel, dil, padding, 1).reshape(B, h, c, kk, N)

        k_nb = unfold(k).permute(0, 1, 4, 2, 3)  # (B, h, N, d_qk, kk)
        v_nb = unfold(v).permute(0, 1, 4, 3, 2)  # (B, h, N, kk, d_v)
        logits = (q_rows @ k_nb) * scale  # (B, h, N, 1, kk)
        if border == "masked":
            ones = torch.ones(1, 1, H, W, dtype=q.dtype, device=q.device)
            outside = F.unfold(ones, kernel, dil, padding, 1)[0] == 0  # (kk, N): padding positions
            logits = logits.masked_fill(outside.t()[:, None, :], float("-inf"))
    probs = logits.softmax(dim=-1)
    return (probs @ v_nb).reshape(B, h, H, W, d_v)


# ---------------------------------------------------------------------------------------------------------
# Backend "cpu_fast": shifted views, one offset at a time, hand-written backward
# ---------------------------------------------------------------------------------------------------------
#
# Both passes loop over the k_h * k_w window offsets. For each offset the neighbour tensor is a shifted
# *view* of the zero-padded K (or V), so no k*k copy exists; the logits of one offset are a product and a
# reduction over d, and the output is accumulated with addcmul. Memory: the padded K/V, the
# (k*k, tokens) logits/probabilities and a few (tokens, d) buffers - O(N*k*k + N*d), against
# O(N*k*k*d) for unfold. The probabilities are saved for the backward, which uses the usual softmax
# identity dS = P * (dP - sum_o P_o dP_o) and scatters dK/dV back through the same views.
#
# "inward" windows are not a shift of the whole map (border queries use a window shifted by a
# position-dependent amount), so that geometry gathers with index_select and scatters with index_add_.
# Both are fast on dim 0 of a (tokens, B*heads, d) layout and slow on dim 2 of (B, heads, H*W, d)
# (measured 3-9x on 2 cores), so the inward geometry works token-major and pays one transpose per tensor.


class _Geometry(Protocol):
    """Where the neighbours of every query are, for one border rule (see the two classes below)."""

    def to_tokens(self, t: Tensor, dtype: torch.dtype) -> Tensor: ...
    def from_tokens(self, t: Tensor, dtype: torch.dtype) -> Tensor: ...
    def prepare(self, t: Tensor, dtype: torch.dtype) -> Tensor: ...
    def neighbour_buffer(self, prepared: Tensor) -> Tensor | None: ...
    def neighbour(self, prepared: Tensor, o: int, buffer: Tensor | None) -> Tensor: ...
    def grad_buffer(self, prepared: Tensor) -> Tensor: ...
    def scatter_add(self, buf: Tensor, o: int, weight: Tensor, src: Tensor, tmp: Tensor) -> None: ...
    def finish(self, buf: Tensor, dtype: torch.dtype) -> Tensor: ...
    def outside(self) -> Tensor | None: ...


class _PaddedGeometry:
    """``border="zero"`` / ``"masked"``: neighbours are shifted views of the zero-padded map.

    Token layout is the caller's ``(B, heads, H, W, d)``, so q and the output need no copy.
    """

    def __init__(
        self,
        shape: Sequence[int],
        kernel: tuple[int, int],
        dil: tuple[int, int],
        border: str,
        device: torch.device,
    ):
        self.H, self.W = shape[2], shape[3]
        self.kernel, self.dil, self.border, self.device = kernel, dil, border, device
        self.pad = (dil[0] * (kernel[0] - 1) // 2, dil[1] * (kernel[1] - 1) // 2)

    def to_tokens(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return t.to(dtype)

    def from_tokens(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return t.to(dtype)

    def prepare(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        ph, pw = self.pad
        return F.pad(t.to(dtype), (0, 0, pw, pw, ph, ph))  # zeros: logit 0 and value 0 outside

    def neighbour_buffer(self, prepared: Tensor) -> Tensor | None:
        return None

    def _window(self, t: Tensor, o: int) -> Tensor:
        a, b = divmod(o, self.kernel[1])
        top, left = a * self.dil[0], b * self.dil[1]
        return t[:, :, top : top + self.H, left : left + self.W]

    def neighbour(self, prepared: Tensor, o: int, buffer: Tensor | None) -> Tensor:
        return self._window(prepared, o)

    def grad_buffer(self, prepared: Tensor) -> Tensor:
        return torch.zeros_like(prepared)

    def scatter_add(self, buf: Tensor, o: int, weight: Tensor, src: Tensor, tmp: Tensor) -> None:
        self._window(buf, o).addcmul_(weight, src)

    def finish(self, buf: Tensor, dtype: torch.dtype) -> Tensor:
        ph, pw = self.pad
        # .contiguous(): a cropped view would keep the padded buffer alive and disagree with the fake
        # kernel's strides (torch.compile checks them); .to() alone returns the view when dtypes match.
        return buf[:, :, ph : ph + self.H, pw : pw + self.W].to(dtype).contiguous()

    def outside(self) -> Tensor | None:
        """``(k*k, 1, 1, H, W)`` bool, True where a neighbour is outside the image (``"masked"`` only)."""
        if self.border != "masked":
            return None
        _, rv = _centred_axis_index(self.H, self.kernel[0], self.dil[0], self.device)
        _, cv = _centred_axis_index(self.W, self.kernel[1], self.dil[1], self.device)
        valid = rv[:, None, :, None] & cv[None, :, None, :]  # (k_h, k_w, H, W)
        return ~valid.reshape(-1, 1, 1, self.H, self.W)


class _InwardGeometry:
    """``border="inward"``: neighbours gathered by index in a token-major ``(H*W, B*heads, d)`` layout."""

    def __init__(self, shape: Sequence[int], kernel: tuple[int, int], dil: tuple[int, int], device: torch.device):
        self.B, self.h, self.H, self.W = shape[0], shape[1], shape[2], shape[3]
        rows = _inward_axis_index(self.H, kernel[0], dil[0], device)  # (k_h, H)
        cols = _inward_axis_index(self.W, kernel[1], dil[1], device)  # (k_w, W)
        # flat[o, i * W + j] = token index of neighbour o of query (i, j); o = a * k_w + b.
        self.flat = (rows[:, None, :, None] * self.W + cols[None, :, None, :]).reshape(
            kernel[0] * kernel[1], self.H * self.W
        )

    def to_tokens(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        out = torch.empty((self.H, self.W, self.B, self.h, t.shape[-1]), dtype=dtype, device=t.device)
        out.copy_(t.permute(2, 3, 0, 1, 4))  # one pass: transpose and cast together
        return out.view(self.H * self.W, self.B * self.h, t.shape[-1])

    def from_tokens(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        out = torch.empty((self.B, self.h, self.H, self.W, t.shape[-1]), dtype=dtype, device=t.device)
        out.copy_(t.view(self.H, self.W, self.B, self.h, t.shape[-1]).permute(2, 3, 0, 1, 4))
        return out

    def prepare(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return self.to_tokens(t, dtype)

    def neighbour_buffer(self, prepared: Tensor) -> Tensor | None:
        return torch.empty_like(prepared)

    def neighbour(self, prepared: Tensor, o: int, buffer: Tensor | None) -> Tensor:
        return torch.index_select(prepared, 0, self.flat[o], out=buffer)

    def grad_buffer(self, prepared: Tensor) -> Tensor:
        return torch.zeros_like(prepared)

    def scatter_add(self, buf: Tensor, o: int, weight: Tensor, src: Tensor, tmp: Tensor) -> None:
        # Several queries share a neighbour at the border, so this is a scatter-add, not a view update.
        # index_add_ adds in index order on CPU (deterministic); on CUDA it uses atomics.
        torch.mul(weight, src, out=tmp)
        buf.index_add_(0, self.flat[o], tmp)

    def finish(self, buf: Tensor, dtype: torch.dtype) -> Tensor:
        return self.from_tokens(buf, dtype)

    def outside(self) -> Tensor | None:
        return None


def _geometry(
    border: str, shape: Sequence[int], kernel: tuple[int, int], dil: tuple[int, int], device: torch.device
) -> _Geometry:
    if border == "inward":
        return _InwardGeometry(shape, kernel, dil, device)
    return _PaddedGeometry(shape, kernel, dil, border, device)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32 (accumulating k*k terms in 8 mantissa bits loses too much)."""
    return torch.promote_types(dtype, torch.float32)


def _probs_shape(shape: Sequence[int], kernel_h: int, kernel_w: int, border: str) -> tuple[int, ...]:
    """Shape of the saved probabilities: offsets first, then the geometry's token dims."""
    B, h, H, W = shape[:4]
    if border == "inward":
        return (kernel_h * kernel_w, H * W, B * h)
    return (kernel_h * kernel_w, B, h, H, W)


def _check_op_args(border: str) -> None:
    # The public wrapper validates everything; this guards direct calls of the custom op.
    if border not in BORDERS:
        raise UnknownNameError("neighbourhood-attention border", border, BORDERS)


@torch.library.custom_op("attn_zoo::na2d", mutates_args=())
def _na2d_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_h: int,
    kernel_w: int,
    dilation_h: int,
    dilation_w: int,
    scale: float,
    border: str,
) -> tuple[Tensor, Tensor]:
    """Forward of ``cpu_fast``: returns ``(out (B, heads, H, W, d_v), probs)``.

    ``probs`` holds the softmax probabilities, offsets first, in the geometry's token layout (see
    ``_probs_shape``); it is saved for the backward and is not differentiable.
    """
    _check_op_args(border)
    kernel, dil = (kernel_h, kernel_w), (dilation_h, dilation_w)
    geo = _geometry(border, q.shape, kernel, dil, q.device)
    ct = _compute_dtype(q.dtype)
    qt = geo.to_tokens(q, ct)
    kp, vp = geo.prepare(k, ct), geo.prepare(v, ct)
    kk = kernel_h * kernel_w
    k_buf, v_buf = geo.neighbour_buffer(kp), geo.neighbour_buffer(vp)

    logits = qt.new_empty((kk, *qt.shape[:-1]))
    prod = torch.empty_like(qt)  # reused for every offset: no allocation inside the loop
    for o in range(kk):
        torch.mul(qt, geo.neighbour(kp, o, k_buf), out=prod)
        torch.sum(prod, dim=-1, out=logits[o])
    logits.mul_(scale)
    outside = geo.outside()
    if outside is not None:
        logits.masked_fill_(outside, float("-inf"))
    probs = torch.softmax(logits, dim=0)
    del logits, prod

    out = qt.new_zeros((*qt.shape[:-1], vp.shape[-1]))
    for o in range(kk):
        out.addcmul_(probs[o].unsqueeze(-1), geo.neighbour(vp, o, v_buf))
    return geo.from_tokens(out, q.dtype), probs


@_na2d_op.register_fake
def _na2d_fake(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_h: int,
    kernel_w: int,
    dilation_h: int,
    dilation_w: int,
    scale: float,
    border: str,
) -> tuple[Tensor, Tensor]:
    out = q.new_empty((*q.shape[:4], v.shape[-1]))
    probs = q.new_empty(_probs_shape(q.shape, kernel_h, kernel_w, border), dtype=_compute_dtype(q.dtype))
    return out, probs


@torch.library.custom_op("attn_zoo::na2d_backward", mutates_args=())
def _na2d_backward_op(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    probs: Tensor,
    kernel_h: int,
    kernel_w: int,
    dilation_h: int,
    dilation_w: int,
    scale: float,
    border: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of ``cpu_fast``: ``(dq, dk, dv)`` from the saved probabilities; nothing is recomputed.

    With ``P`` the probabilities and ``dO`` the output gradient: ``dP_o = dO . v_o``,
    ``dS_o = scale * P_o * (dP_o - sum_o' P_o' dP_o')``, ``dq = sum_o dS_o k_o``, and ``dk``/``dv``
    receive ``dS_o q`` / ``P_o dO`` at each neighbour position.
    """
    _check_op_args(border)
    kernel, dil = (kernel_h, kernel_w), (dilation_h, dilation_w)
    geo = _geometry(border, q.shape, kernel, dil, q.device)
    ct = probs.dtype
    qt, go = geo.to_tokens(q, ct), geo.to_tokens(grad_out, ct)
    kp, vp = geo.prepare(k, ct), geo.prepare(v, ct)
    kk = kernel_h * kernel_w
    k_buf, v_buf = geo.neighbour_buffer(kp), geo.neighbour_buffer(vp)
    prod_v = torch.empty_like(go)

    d_s = torch.empty_like(probs)  # dP first, turned into dS in place
    for o in range(kk):
        torch.mul(go, geo.neighbour(vp, o, v_buf), out=prod_v)
        torch.sum(prod_v, dim=-1, out=d_s[o])
    # Out-of-image neighbours: "zero" has v = 0 there (dP = 0) and k = 0 (no dq); "masked" has P = 0.
    delta = (probs * d_s).sum(dim=0)
    d_s.sub_(delta).mul_(probs).mul_(scale)

    # a fresh contiguous buffer, not zeros_like: the output strides must be the fake kernel's whatever q's
    # layout (torch.compile asserts them), and a heads-last q would otherwise hand its strides on
    dq = qt.new_zeros(qt.shape)
    dk_buf, dv_buf = geo.grad_buffer(kp), geo.grad_buffer(vp)
    prod_q = torch.empty_like(qt)
    for o in range(kk):
        w_s = d_s[o].unsqueeze(-1)
        dq.addcmul_(w_s, geo.neighbour(kp, o, k_buf))
        geo.scatter_add(dk_buf, o, w_s, qt, prod_q)
        geo.scatter_add(dv_buf, o, probs[o].unsqueeze(-1), go, prod_v)
    return geo.from_tokens(dq, q.dtype), geo.finish(dk_buf, k.dtype), geo.finish(dv_buf, v.dtype)


@_na2d_backward_op.register_fake
def _na2d_backward_fake(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    probs: Tensor,
    kernel_h: int,
    kernel_w: int,
    dilation_h: int,
    dilation_w: int,
    scale: float,
    border: str,
) -> tuple[Tensor, Tensor, Tensor]:
    # contiguous, as the real kernel returns them (empty_like would keep a permuted input's strides)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _na2d_setup_context(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:  # type: ignore[no-untyped-def]
    q, k, v, kernel_h, kernel_w, dilation_h, dilation_w, scale, border = inputs
    _, probs = output
    ctx.mark_non_differentiable(probs)
    ctx.set_materialize_grads(False)  # an unused output gets None, not a zero tensor to test
    ctx.save_for_backward(q, k, v, probs)
    ctx.params = (kernel_h, kernel_w, dilation_h, dilation_w, scale, border)


def _na2d_autograd(ctx, grad_out: Tensor | None, grad_probs: Tensor | None) -> tuple:  # type: ignore[no-untyped-def]
    nones = (None,) * 6
    if grad_out is None:
        return (None, None, None, *nones)
    q, k, v, probs = ctx.saved_tensors
    dq, dk, dv = torch.ops.attn_zoo.na2d_backward(grad_out, q, k, v, probs, *ctx.params)
    need = ctx.needs_input_grad
    return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None, *nones)


_na2d_op.register_autograd(_na2d_autograd, setup_context=_na2d_setup_context)


@register_flop_formula(torch.ops.attn_zoo.na2d)
def _na2d_flops(
    q_shape: Sequence[int],
    k_shape: Sequence[int],
    v_shape: Sequence[int],
    kernel_h: int,
    kernel_w: int,
    *args: object,
    out_shape: object = None,
    **kwargs: object,
) -> int:
    B, h, H, W, d_qk = q_shape
    return 2 * neighborhood_attention_macs(B, h, H, W, (kernel_h, kernel_w), d_qk, v_shape[-1])


@register_flop_formula(torch.ops.attn_zoo.na2d_backward)
def _na2d_backward_flops(
    grad_out_shape: Sequence[int],
    q_shape: Sequence[int],
    k_shape: Sequence[int],
    v_shape: Sequence[int],
    probs_shape: Sequence[int],
    kernel_h: int,
    kernel_w: int,
    *args: object,
    out_shape: object = None,
    **kwargs: object,
) -> int:
    # dP (d_v), dq (d_qk), dk (d_qk), dv (d_v): twice the forward, as for the matmuls of the reference.
    B, h, H, W, d_qk = q_shape
    return 4 * neighborhood_attention_macs(B, h, H, W, (kernel_h, kernel_w), d_qk, v_shape[-1])


# ---------------------------------------------------------------------------------------------------------
# Backend "natten"
# ---------------------------------------------------------------------------------------------------------

_natten_module: object | None = None
_natten_error: str | None = None
_natten_tried = False


def _natten_import_error() -> str | None:
    """None if natten imports, else why not (the import is tried once per process)."""
    global _natten_module, _natten_error, _natten_tried
    if not _natten_tried:
        _natten_tried = True
        try:
            import natten  # optional dependency, imported on first use only

            _natten_module = natten
        except Exception as exc:  # ImportError, or a natten/torch mismatch failing at import
            _natten_error = f"natten is not importable ({type(exc).__name__}: {exc}); install: {_NATTEN_INSTALL}"
    return _natten_error


def _import_natten():  # type: ignore[no-untyped-def]
    reason = _natten_import_error()
    if reason is not None:
        raise BackendUnavailableError(reason)
    return _natten_module


def _natten_na2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel: tuple[int, int],
    dil: tuple[int, int],
    scale: float,
) -> Tensor:
    """natten's ``na2d`` on natten's own heads-last layout: ``(B, H, W, heads, d)`` in and out (the dispatch
    moves the heads only for a caller whose tensors are heads-first, ``Path.heads_last``).

    natten's "no kernel for this case" is a BackendUnavailableError: nothing falls back to another path.
    """
    natten = _import_natten()
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise BackendUnavailableError(
            "natten on CPU runs only its flex backend, which has no backward; run under torch.no_grad() "
            "or use backend='cpu_fast' (same inward semantics)"
        )
    # Under no_grad, flex on CPU still refuses inputs that merely have requires_grad set: detach them.
    detach = q.device.type == "cpu"
    to_natten = [(t.detach() if detach else t).contiguous() for t in (q, k, v)]  # no copy when already dense
    try:
        out = natten.na2d(*to_natten, kernel_size=kernel, dilation=dil, scale=scale)  # type: ignore[attr-defined]
    except NotImplementedError as exc:  # natten found no backend for this dtype/head dims/device
        raise BackendUnavailableError(
            f"natten has no kernel for this call (dtype {q.dtype}, d_qk {q.shape[-1]}, d_v {v.shape[-1]}, "
            f"device {q.device}; natten's flex path, the only one on CPU, needs d_qk == d_v, a power of "
            f"two in [8, 512], and a 16/32-bit float): {exc}"
        ) from exc
    return out
