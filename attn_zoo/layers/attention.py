"""Dense (all-pairs) attention behind one call: the readable reference and the fused paths.

``q: (..., heads, N_q, d)``, ``k: (..., heads, N_k, d)``, ``v: (..., heads, N_k, d_v)``; ``bias`` is added
to the logits and broadcasts to ``(..., heads, N_q, N_k)`` (relative position bias, Swin's shift mask).
Window, global and reduced-key attention all reduce to this call; windowed mechanisms pass
``(B, nW, heads, N, d)`` tensors (one leading dimension per image and one per window).

Backends (names as in :mod:`attn_zoo.layers.backends`):

* ``"reference"``: ``softmax(scale q k^T + bias) v`` written out; the parity baseline.
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``. Its fused kernels (flash and
  memory-efficient on CUDA, flash on CPU) take 4-D tensors only, so the leading dimensions are merged
  first; 5-D input would silently fall back to SDPA's unfused math path.
* ``"xformers"``: ``xformers.ops.memory_efficient_attention`` (CUDA only).
* ``"flex"``: ``torch.nn.attention.flex_attention``. For windowed input ``(B, nW, heads, N, d)`` the
  windows of one image become one sequence of ``nW * N`` tokens with a block-diagonal block mask (so only
  blocks that touch a window are computed) and the bias is read per window by a ``score_mod``. Compiled
  (fused Triton kernel) on CUDA; on CPU it runs eagerly, forward only (torch has no flex backward on CPU),
  which is what the parity tests use.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from attn_zoo.errors import BackendUnavailableError

# The paths a mechanism offers (which one `auto` takes is the shape table's choice: attn_zoo/layers/auto_table.py;
# whether one runs here is the dispatch table's: attn_zoo/layers/backends.py)
DENSE_BACKENDS = ("sdpa", "reference")
# Window attention (Swin, IWSA, GC-ViT) also offers flex's block-diagonal mask
WINDOW_BACKENDS = (*DENSE_BACKENDS, "flex", "xformers")


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(scale * q k^T + bias) v, written out."""
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1) @ v


def _merge_leading(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(..., heads, N, d)`` -> ``(B', heads, N, d)`` and the bias as a 4-D tensor broadcastable to the logits.

    The bias is copied only when it varies along a merged dimension other than the first one it spans
    (Swin's shift mask varies per window and is shared by the images, so it is expanded over the images).
    """
    if bias is not None:
        bias = bias.to(q.dtype)
        while bias.dim() < q.dim():
            bias = bias.unsqueeze(0)
    if q.dim() == 4:
        return q, k, v, bias
    q4, k4, v4 = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
    if bias is not None:
        lead = q.shape[:-3]
        if all(s == 1 for s in bias.shape[:-3]):
            bias = bias.reshape(1, *bias.shape[-3:])
        else:
            bias = bias.expand(*lead, *bias.shape[-3:]).reshape(-1, *bias.shape[-3:])
    return q4, k4, v4, bias


def attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The same through ``torch.nn.functional.scaled_dot_product_attention`` (fused where it can be)."""
    q4, k4, v4, bias4 = _merge_leading(q, k, v, bias)
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=bias4, scale=scale)
    return out.reshape(*q.shape[:-1], v.shape[-1])


def attention_xformers(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """xformers' memory-efficient attention (CUDA only). Layout ``(B', N, heads, d)`` inside."""
    import xformers.ops as xops

    q4, k4, v4, bias4 = _merge_leading(q, k, v, bias)
    attn_bias = None
    if bias4 is not None:
        # xformers takes a dense (B', heads, N_q, N_k) tensor whose rows start at multiples of 8 elements:
        # allocate the key axis rounded up to 8 and slice (xformers' documented recipe for N_k = 49).
        n_q, n_k = q4.shape[-2], k4.shape[-2]
        shape = (q4.shape[0], q4.shape[1], n_q, n_k)
        padded = bias4.new_zeros((*shape[:-1], 8 * math.ceil(n_k / 8)))
        attn_bias = padded[..., :n_k]
        attn_bias.copy_(bias4.expand(shape))
    out = xops.memory_efficient_attention(
        q4.transpose(1, 2), k4.transpose(1, 2), v4.transpose(1, 2), attn_bias=attn_bias, scale=scale
    )
    return out.transpose(1, 2).reshape(*q.shape[:-1], v.shape[-1])


# -- flex_attention -----------------------------------------------------------------------------------------
_flex_compiled: Callable | None = None
_block_masks: dict[tuple, object] = {}
# flex's fused (Triton) kernel needs head dims >= 16 (torch 2.11 on CUDA: "NYI: embedding dimension ... must be
# at least 16"); smaller heads are zero-padded, which changes no logit and adds output channels that are cut off
FLEX_MIN_HEAD_DIM = {"cuda": 16}


def _flex_fn(device: torch.device) -> Callable:
    """``flex_attention`` compiled once per process on CUDA (the fused kernel); eager elsewhere."""
    global _flex_compiled
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    return _flex_compiled


def _window_block_mask(windows: int, tokens: int, device: torch.device):  # -> BlockMask
    """Block-diagonal mask over ``windows`` windows of ``tokens`` tokens each, cached per shape and device."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (windows, tokens, str(device))
    if key not in _block_masks:

        def same_window(b, h, q_idx, kv_idx):  # flex's mask_mod signature
            return q_idx // tokens == kv_idx // tokens

        length = windows * tokens
        _block_masks[key] = create_block_mask(same_window, None, None, length, length, device=device)
    return _block_masks[key]


def attention_flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``flex_attention``: windowed input ``(B, nW, heads, N, d)`` as one block-diagonal sequence per image.

    4-D input ``(B, heads, N, d)`` is plain attention (bias read by a ``score_mod``). Other ranks are refused.
    On CPU only the forward runs (torch's flex has no CPU backward): inputs that require grad are an error.
    """
    if is_in_torch_dispatch_mode(include_infra_modes=False):
        # counting (FlopCounterMode): compiled flex fails under a dispatch mode (seen on an H200, torch 2.11:
        # "no implementation found for 'torch.ops.higher_order.flex_attention' ... TransformGetItemToIndex"),
        # and the count is of the same attention: take the written-out path
        return attention_reference(q, k, v, scale=scale, bias=bias)
    tensors = (q, k, v) if bias is None else (q, k, v, bias)
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise BackendUnavailableError(
            "flex_attention has no backward on CPU (torch runs it eagerly there, forward only); run under "
            "torch.no_grad() or use backend 'reference' or 'sdpa'"
        )
    if q.device.type == "cpu":  # torch's flex refuses CPU inputs that merely carry requires_grad
        q, k, v = q.detach(), k.detach(), v.detach()
        bias = bias.detach() if bias is not None else None
    flex = _flex_fn(q.device)
    d_v = v.shape[-1]
    minimum = FLEX_MIN_HEAD_DIM.get(q.device.type, 1)
    if q.shape[-1] < minimum:
        q, k = (F.pad(t, (0, minimum - t.shape[-1])) for t in (q, k))
    if d_v < minimum:
        v = F.pad(v, (0, minimum - d_v))
    with warnings.catch_warnings():
        # eager flex on CPU warns that it is unfused; that is known and intended here (parity checks)
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        if q.dim() == 4:
            score_mod = None
            if bias is not None:
                full = bias.to(q.dtype).expand(*q.shape[:-1], k.shape[-2]).contiguous()

                def score_mod(score, b, h, q_idx, kv_idx):
                    return score + full[b, h, q_idx, kv_idx]

            return flex(q, k, v, score_mod=score_mod, scale=scale)[..., :d_v]
        if q.dim() != 5:
            raise ValueError(f"flex backend: expected (B, heads, N, d) or (B, nW, heads, N, d), got {tuple(q.shape)}")
        B, nW, h, N = q.shape[:4]

        def sequence(t: torch.Tensor) -> torch.Tensor:  # (B, nW, h, N, c) -> (B, h, nW * N, c)
            return t.transpose(1, 2).reshape(B, h, nW * N, t.shape[-1])

        score_mod = None
        if bias is not None:
            while bias.dim() < 5:
                bias = bias.unsqueeze(0)
            if bias.shape[0] != 1:
                raise ValueError(f"flex backend: the bias must be shared by the images, got shape {tuple(bias.shape)}")
            table = bias[0].to(q.dtype).expand(nW, h, N, N).contiguous()  # (nW, heads, N, N)

            def score_mod(score, b, head, q_idx, kv_idx):
                return score + table[q_idx // N, head, q_idx % N, kv_idx % N]

        out = flex(
            sequence(q),
            sequence(k),
            sequence(v),
            score_mod=score_mod,
            block_mask=_window_block_mask(nW, N, q.device),
            scale=scale,
        )
    return out.reshape(B, h, nW, N, v.shape[-1]).transpose(1, 2)[..., :d_v]


def dense_call(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> dict[str, object]:
    """What the shape table keys a dense call on: queries and keys per sequence, head width, bias, gradients."""
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
    return {
        "n_q": int(q.shape[-2]),
        "n_k": int(k.shape[-2]),
        "head_dim": int(q.shape[-1]),
        "v_dim": int(v.shape[-1]) if v is not None else int(q.shape[-1]),
        "seqs": int(q.numel() // max(1, q.shape[-2] * q.shape[-1])),
        "bias": bias is not None,
        "grad": bool(grad),
    }
