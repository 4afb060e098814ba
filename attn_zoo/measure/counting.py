"""Parameters, MACs and FLOPs with ``torch.utils.flop_counter.FlopCounterMode``; fvcore as a cross-check.

Names say what they are: ``flops`` is what FlopCounterMode counts (2 per multiply-accumulate of matmuls,
convolutions and fused attention, nothing for norms, softmax or elementwise ops); ``macs`` is ``flops / 2``,
the quantity the papers' "FLOPs" columns report (fvcore's convention). ``attention_macs`` is the part
inside the token mixers and their per-stage context modules (their projections included).

What FlopCounterMode would get wrong, and what this module does about it:

- custom ops (``torch.library.custom_op``) count 0 unless a formula is registered with
  ``torch.utils.flop_counter.register_flop_formula`` (``attn_zoo::na2d`` registers one). Any op outside
  ``aten``/``prims`` that runs without a formula is listed in ``uncounted_ops`` and warned about.
- natten's fused ops (``natten::na{1,2,3}d_forward`` ...; present only in a CUDA build of natten) have no
  formula: :data:`NATTEN_OPS` adds one (every query attends ``prod(kernel_size)`` keys).
- ``flex_attention`` is counted by torch as dense attention over all query-key pairs. With a block mask
  (natten's CPU path, neighbourhood masks) that overcounts many times; here it is counted over the pairs
  its ``mask_mod`` keeps (exactly, evaluated in chunks; or from the block mask's computed blocks when the
  map is too large to enumerate, see :func:`flex_kept_fraction`).
- fvcore (:func:`fvcore_macs`) traces with TorchScript and skips ``scaled_dot_product_attention``, so it
  undercounts fused attention; it is reported as a cross-check column, not as the number.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from attn_zoo.mechanisms.base import Mixer

#: pairs enumerated at most per chunk when counting a flex_attention mask exactly
_FLEX_CHUNK_PAIRS = 1 << 24
#: above this many (query, key) pairs per mask the flex count uses the block mask's computed blocks
FLEX_EXACT_MAX_PAIRS = 1 << 31


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- extra formulas -----------------------------------------------------------------------------------------
def _tokens(t: torch.Tensor) -> int:
    """Query tokens times heads of a (..., d) tensor, whatever its layout."""
    return t.numel() // t.shape[-1]


def _na_forward_flops(query, key, value, kernel_size, *args, out_val=None, **kwargs) -> int:
    """natten fused neighbourhood attention: each query meets prod(kernel_size) keys: q k^T and attn v."""
    return 2 * _tokens(query) * math.prod(kernel_size) * (query.shape[-1] + value.shape[-1])


def _na_backward_flops(query, key, value, output, d_output, logsumexp, kernel_size, *args, out_val=None, **kw) -> int:
    # dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q: twice the forward's two products
    return 2 * _na_forward_flops(query, key, value, kernel_size)


def _fmha_forward_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    """natten's fused global attention, heads-last layout ``(B, S, heads, d)``."""
    return 2 * _tokens(query) * key.shape[1] * (query.shape[-1] + value.shape[-1])


def _fmha_backward_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return 2 * _fmha_forward_flops(query, key, value)


_NA_PREFIXES = ("", "hopper_", "blackwell_", "reference_")
NATTEN_OPS: dict[str, Callable[..., int]] = {
    **{f"{p}na{n}d_forward": _na_forward_flops for p in _NA_PREFIXES for n in (1, 2, 3)},
    **{f"{p}na{n}d_backward": _na_backward_flops for p in _NA_PREFIXES for n in (1, 2, 3)},
    **{f"{p}fmha_forward": _fmha_forward_flops for p in ("", "hopper_", "blackwell_")},
    **{f"{p}fmha_backward": _fmha_backward_flops for p in ("", "hopper_", "blackwell_")},
}
for _fn in set(NATTEN_OPS.values()):
    _fn._get_raw = True  # FlopCounterMode passes tensors (not shapes) to raw formulas


def _natten_mapping() -> dict[Any, Callable[..., int]]:
    """Formulas for natten's ops that exist in this process (a CUDA build of natten registers them)."""
    namespace = torch.ops.natten
    mapping = {}
    for name, formula in NATTEN_OPS.items():
        try:
            mapping[getattr(namespace, name)] = formula
        except (AttributeError, RuntimeError):
            continue
    return mapping


def flex_kept_fraction(block_mask: tuple, batch: int, heads: int, device: torch.device) -> float:
    """Fraction of (query, key) pairs a flex_attention block mask keeps.

    Exact (``mask_mod`` evaluated over every pair, in chunks of query rows) up to
    :data:`FLEX_EXACT_MAX_PAIRS` pairs; above that, the fraction of pairs in the blocks the kernel computes
    (partial + full blocks), an upper bound. ``block_mask`` is ``BlockMask.as_tuple()`` as the HOP gets it.
    """
    from torch.nn.attention.flex_attention import _DEFAULT_SPARSE_BLOCK_SIZE, create_mask, noop_mask

    q_len, kv_len, kv_num_blocks, mask_mod = block_mask[0], block_mask[1], block_mask[2], block_mask[-1]
    if mask_mod is None or mask_mod is noop_mask:
        return 1.0
    mb, mh = (kv_num_blocks.shape[0], kv_num_blocks.shape[1]) if kv_num_blocks.dim() >= 3 else (1, 1)
    if q_len * kv_len * mb * mh <= FLEX_EXACT_MAX_PAIRS:
        rows = max(1, _FLEX_CHUNK_PAIRS // max(1, kv_len * mb * mh))
        kept = 0
        for start in range(0, q_len, rows):
            n = min(rows, q_len - start)

            def shifted(b, h, q, kv, start=start):
                return mask_mod(b, h, q + start, kv)

            kept += int(create_mask(shifted, mb, mh, n, kv_len, device=device).sum())
        return kept / (q_len * kv_len * mb * mh)
    full = block_mask[4]
    q_block, kv_block = (block_mask[-3], block_mask[-2]) if len(block_mask) >= 5 else (_DEFAULT_SPARSE_BLOCK_SIZE,) * 2
    blocks = kv_num_blocks.sum() + (full.sum() if full is not None else 0)
    return min(1.0, float(blocks) * q_block * kv_block / (q_len * kv_len * mb * mh))


def _flex_mapping() -> dict[Any, Callable[..., int]]:
    try:
        from torch._higher_order_ops.flex_attention import flex_attention, flex_attention_backward
    except ImportError:  # pragma: no cover - present in the pinned torch
        return {}
    cache: dict[tuple, float] = {}

    def fraction(query: torch.Tensor, block_mask: tuple) -> float:
        key = (id(block_mask[-1]), block_mask[0], block_mask[1], query.shape[0], query.shape[1])
        if key not in cache:
            cache[key] = flex_kept_fraction(block_mask, query.shape[0], query.shape[1], query.device)
        return cache[key]

    def forward(query, key, value, score_mod, block_mask, *args, out_val=None, **kwargs) -> int:
        dense = sdpa_flop_count(query.shape, key.shape, value.shape)
        return int(dense * fraction(query, block_mask))

    def backward(query, key, value, out, logsumexp, grad_out, grad_lse, fw, joint, block_mask, *a, out_val=None, **k):
        dense = sdpa_backward_flop_count((grad_out if grad_out is not None else out).shape, query.shape, key.shape,
                                         value.shape)  # fmt: skip
        return int(dense * fraction(query, block_mask))

    forward._get_raw = backward._get_raw = True
    return {flex_attention: forward, flex_attention_backward: backward}


def extra_flop_formulas() -> dict[Any, Callable[..., int]]:
    """The ``custom_mapping`` attn_zoo gives FlopCounterMode: flex_attention by kept pairs, natten's ops."""
    return {**_flex_mapping(), **_natten_mapping()}


class _OpaqueOps(TorchDispatchMode):
    """Records ops outside aten/prims that FlopCounterMode has no formula for (they would count 0)."""

    supports_higher_order_operators = True

    def __init__(self, known: Iterable[Any]):
        super().__init__()
        self.known = set(known)
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = getattr(func, "_overloadpacket", None)
        namespace = getattr(func, "namespace", "aten")
        if packet is not None and namespace not in ("aten", "prims", "prim") and packet not in self.known:
            self.seen.add(str(packet))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _eager_flex() -> Iterator[None]:
    """Run flex_attention's HOP directly while counting.

    Outside torch.compile, flex_attention wraps its HOP in ``torch.compile(fullgraph=True)``, which refuses
    to run under a dispatch mode such as FlopCounterMode (torch 2.15: "found no compiled frames"); its debug
    switch calls the HOP eagerly instead (same math; forward only, which is all counting needs).
    """
    try:
        import torch.nn.attention.flex_attention as flex
    except ImportError:  # pragma: no cover
        yield
        return
    old = flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG
    flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            yield
    finally:
        flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = old


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode with attn_zoo's extra formulas (use it as a context manager)."""
    return FlopCounterMode(display=False, custom_mapping=extra_flop_formulas())


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, dict[Any, int]], list[str]]:
    """Run ``fn()`` under the counter; ``(total FLOPs, per-module counts, uncounted custom ops)``."""
    counter = flop_counter()
    with counter, _eager_flex():
        opaque = _OpaqueOps(counter.flop_registry)
        with opaque:
            fn()
    uncounted = sorted(opaque.seen)
    if uncounted:
        warnings.warn(
            f"FlopCounterMode has no formula for {uncounted}: they count 0 FLOPs "
            "(register one with torch.utils.flop_counter.register_flop_formula)",
            RuntimeWarning,
            stacklevel=2,
        )
    return counter.get_total_flops(), counter.get_flop_counts(), uncounted


def _mixer_module_names(model: nn.Module) -> list[str]:
    """Names of the top-level mixers and of the stage contexts (what a mechanism owns)."""
    names = []
    for name, module in model.named_modules():
        owned = isinstance(module, Mixer) or name.split(".")[-2:-1] == ["contexts"]
        if owned and not any(name.startswith(p + ".") for p in names):
            names.append(name)
    return names


@torch.no_grad()
def count_model(
    model: nn.Module,
    img_size: int | tuple[int, int],
    *,
    in_chans: int = 3,
    batch: int = 1,
    device: str | torch.device = "cpu",
    fvcore: bool = False,
) -> dict[str, Any]:
    """Count one forward pass of ``batch`` images of ``img_size``; the result is per image.

    Returns ``params``, ``flops``, ``macs``, ``attention_flops``, ``attention_macs``, ``uncounted_ops``
    (custom ops that ran without a formula; a list, not stored) and with ``fvcore=True`` ``fvcore_macs``.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    was_training = model.training
    model.eval()
    x = torch.randn(batch, in_chans, h, w, device=device)
    try:
        total, counts, uncounted = count_flops(lambda: model(x))
    finally:
        model.train(was_training)
    root = type(model).__name__
    attention = 0
    for name in _mixer_module_names(model):
        attention += sum(counts.get(f"{root}.{name}", {}).values())
    result: dict[str, Any] = {
        "params": count_params(model),
        "flops": total // batch,
        "macs": total // (2 * batch),
        "attention_flops": attention // batch,
        "attention_macs": attention // (2 * batch),
        "uncounted_ops": uncounted,
    }
    if fvcore:
        result["fvcore_macs"] = fvcore_macs(model, (h, w), in_chans=in_chans, device=device)
    return result


def fvcore_macs(
    model: nn.Module, img_size: int | tuple[int, int], *, in_chans: int = 3, device: str | torch.device = "cpu"
) -> float:
    """fvcore's count for one image (its unit is one multiply-accumulate); NaN when fvcore is missing or fails.

    fvcore traces with TorchScript and skips ops it has no handle for, ``scaled_dot_product_attention``
    among them, so fused attention is missing from this number. It is the peers' number, kept to compare.
    """
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return float("nan")
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, torch.randn(1, in_chans, h, w, device=device))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(analysis.total())
    except Exception as exc:  # tracing fails on some custom ops; a cross-check must not fail a run
        warnings.warn(f"fvcore could not count {type(model).__name__}: {exc}", RuntimeWarning, stacklevel=2)
        return float("nan")
    finally:
        model.train(was_training)


def analytic_attention_macs(model: nn.Module, img_size: int | tuple[int, int]) -> int:
    """Sum of every mixer's declared formula at the stage sizes a forward pass at ``img_size`` gives.

    Per-stage context modules (GC-ViT's global query) are part of a mechanism's attention: a context module
    declares its own ``attention_macs(height, width)``, evaluated at its stage's input size.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    owned = [m for name, m in model.named_modules() if isinstance(m, Mixer) or name.split(".")[-2:-1] == ["contexts"]]
    sizes: dict[int, tuple[int, int]] = {}

    def record(mod: nn.Module, args: tuple) -> None:
        sizes[id(mod)] = tuple(args[0].shape[1:3])

    hooks = [m.register_forward_pre_hook(record) for m in owned]
    try:
        was_training = model.training
        with torch.no_grad():
            device = next(iter(model.parameters()), torch.empty(0)).device
            model.eval()(torch.zeros(1, model.config.in_chans, h, w, device=device))
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    total = 0
    for m in owned:
        if id(m) not in sizes:
            continue  # a context no block of its stage asked for, or a mixer the forward pass skipped
        if not callable(getattr(m, "attention_macs", None)):
            raise NotImplementedError(f"{type(m).__name__} (a stage context) declares no attention_macs(height, width)")
        total += m.attention_macs(*sizes[id(m)])
    return total
