"""Dense (all-pairs) attention behind one call: the readable reference and the fused paths.

``q: (..., N_q, d)``, ``k: (..., N_k, d)``, ``v: (..., N_k, d_v)``; ``bias`` is added to the logits and
broadcasts to ``(..., N_q, N_k)`` (relative position bias, Swin's shift mask). Window, global and
reduced-key attention all reduce to this call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attn_zoo.errors import UnknownNameError

DENSE_BACKENDS = ("sdpa", "reference")


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(scale * q k^T + bias) v, written out."""
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1) @ v


def attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The same through ``torch.nn.functional.scaled_dot_product_attention`` (fused where it can be)."""
    if bias is not None:
        bias = bias.to(q.dtype)
        # SDPA wants the mask broadcastable to (..., N_q, N_k) with the same leading rank as q
        while bias.dim() < q.dim():
            bias = bias.unsqueeze(0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def attention_xformers(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """xformers' memory-efficient attention (CUDA only). Layout (B, N, heads, d) inside."""
    import xformers.ops as xops

    lead = q.shape[:-2]
    qf, kf, vf = (t.reshape(-1, *t.shape[-2:]).unsqueeze(2) for t in (q, k, v))  # (B*, N, 1, d)
    attn_bias = None
    if bias is not None:
        attn_bias = bias.to(q.dtype).expand(*lead, q.shape[-2], k.shape[-2]).reshape(-1, 1, *bias.shape[-2:])
        attn_bias = attn_bias.contiguous()
    out = xops.memory_efficient_attention(qf, kf, vf, attn_bias=attn_bias, scale=scale)
    return out.squeeze(2).reshape(*lead, q.shape[-2], v.shape[-1])


_DENSE = {"reference": attention_reference, "sdpa": attention_sdpa, "xformers": attention_xformers}


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    bias: torch.Tensor | None = None,
    backend: str = "reference",
) -> torch.Tensor:
    """Attention over all key positions with backend ``backend`` (already resolved, not ``auto``)."""
    try:
        fn = _DENSE[backend]
    except KeyError:
        raise UnknownNameError("dense attention backend", backend, _DENSE) from None
    return fn(q, k, v, scale=scale, bias=bias)
