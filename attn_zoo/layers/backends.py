"""The one dispatch table of attention paths, and the one function that says which path runs.

``TABLE[device type][op][path]`` holds, for each device type (``"cpu"``, ``"cuda"``) and each attention op
(``"dense"``: all pairs, :mod:`attn_zoo.layers.attention`; ``"neighborhood"``: :mod:`attn_zoo.layers.neighborhood`),
a :class:`Path`: the kernel that ``run``\\ s and ``can_run``, which says whether it runs here. A path can run
when its kernel ran once, forward and (unless it is forward only) backward, on a tiny input on that device;
the result is cached per process. A path that runs but only forward (flex and natten on CPU: parity checks)
is never chosen by ``auto`` and never used by a training cell.

:func:`select` is the one function that returns the path a call will run: a forced name that cannot run is an
error (``BackendUnavailableError``, one line), ``"auto"`` takes the first path that runs in the order the
measured shape table gives for the call's shapes (:mod:`attn_zoo.layers.auto_table`), and nothing falls back
silently. :func:`run` executes a selected path and notes it for :func:`recording`, so tests can compare what
ran with what a result row says (``Backbone.attention_backends``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes, is_in_torch_dispatch_mode

from attn_zoo.errors import BackendUnavailableError, UnknownNameError
from attn_zoo.layers import attention as dense
from attn_zoo.layers import neighborhood as nb

OPS = ("dense", "neighborhood")


@dataclasses.dataclass(frozen=True)
class Path:
    """One attention path on one device type.

    ``run``: the kernel. ``needs(device)``: why it cannot run before trying (a package missing), else None.
    ``forward_only``: why it runs here only forward (never for ``auto`` or training), else None.
    ``accepts(call)``: why it cannot compute this call (natten: only the inward border), else None.
    ``heads_last``: a neighbourhood kernel that takes and returns ``(B, H, W, heads, d)`` (natten's own layout)
    instead of ``(B, heads, H, W, d)``; :func:`run` moves the heads only when the caller's layout differs.
    """

    run: Callable[..., torch.Tensor]
    needs: Callable[[torch.device], str | None] = lambda device: None
    forward_only: Callable[[torch.device], str | None] = lambda device: None
    accepts: Callable[[Mapping[str, Any]], str | None] = lambda call: None
    heads_last: bool = False

    def can_run(self, op: str, name: str, device: torch.device) -> str | None:
        """None if the kernel ran once on a tiny input on ``device`` (cached), else why not."""
        key = (op, name, str(device))
        if key not in _PROBED:
            reason = self.needs(device)
            if reason is None:
                backward = self.forward_only(device) is None
                reason = _probe(op, self.run, device, backward=backward, heads_last=self.heads_last)
            _PROBED[key] = reason
        return _PROBED[key]


_PROBED: dict[tuple[str, str, str], str | None] = {}


def _probe(
    op: str, run: Callable[..., torch.Tensor], device: torch.device, *, backward: bool, heads_last: bool = False
) -> str | None:
    """Run ``run`` once on a tiny input (forward, and backward when the path claims one); None if it worked."""
    try:
        with _disable_current_modes(), torch.inference_mode(False), torch.set_grad_enabled(backward):
            g = torch.Generator().manual_seed(0)
            shape = (1, 1, 8, 8) if op == "dense" else (1, 1, 4, 4, 8)  # one head: the same in either layout
            q, k, v = (torch.randn(shape, generator=g).to(device).requires_grad_(backward) for _ in range(3))
            if op == "dense":
                out = run(q, k, v, scale=0.25, bias=None)
            else:
                if heads_last:
                    q, k, v = (t.view(1, 4, 4, 1, 8) for t in (q, k, v))
                out = run(q, k, v, (3, 3), (1, 1), 0.25, "inward")
            if backward:
                out.sum().backward()
            if device.type != "meta" and not torch.isfinite(out).all():
                return "its kernel returned non-finite values on a tiny input"
    except Exception as exc:  # any failure means: this path does not run here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"its kernel failed on a tiny input ({type(exc).__name__}: {first[:200]})"
    return None


# -- the kernels' preconditions ---------------------------------------------------------------------------------
def _installed(package: str) -> Callable[[torch.device], str | None]:
    def needs(device: torch.device) -> str | None:
        return None if importlib.util.find_spec(package) is not None else f"{package} is not installed"

    return needs


def _cuda_only(package: str) -> Callable[[torch.device], str | None]:
    def needs(device: torch.device) -> str | None:
        return f"{package} has no kernels for {device.type} here (CUDA only)"

    return needs


def _flex_import(device: torch.device) -> str | None:
    try:
        import torch.nn.attention.flex_attention
    except ImportError as exc:  # pragma: no cover - present in the pinned torch
        return f"torch {torch.__version__} has no flex_attention ({exc})"
    return None


def _natten_import(device: torch.device) -> str | None:
    return nb._natten_import_error()


def _natten_cuda_limit(device: torch.device) -> str | None:
    if not getattr(nb._natten_module, "HAS_LIBNATTEN", False):
        return "natten is installed without libnatten, its compiled CUDA kernels (only unfused flex would run)"
    return None


def _natten_accepts(call: Mapping[str, Any]) -> str | None:
    if call.get("border", "inward") != "inward":
        return f"natten implements only border='inward', got border={call['border']!r}"
    if min(call.get("kernel", (3, 3))) < 2:
        return f"natten needs every kernel side >= 2, got {tuple(call['kernel'])}"
    return None


def _na_reference(q, k, v, kernel, dil, scale, border):  # type: ignore[no-untyped-def]
    return nb._reference_na2d(q, k, v, kernel, dil, scale, border)


def _na_cpu_fast(q, k, v, kernel, dil, scale, border):  # type: ignore[no-untyped-def]
    out, _ = torch.ops.attn_zoo.na2d(q, k, v, kernel[0], kernel[1], dil[0], dil[1], scale, border)
    return out


def _na_natten(q, k, v, kernel, dil, scale, border):  # type: ignore[no-untyped-def]
    return nb._natten_na2d(q, k, v, kernel, dil, scale)


_FLEX_CPU = "flex_attention is a fast path only on CUDA (on CPU: eager, every pair, forward only)"
_NATTEN_CPU = "on CPU natten runs only its unfused flex path, forward only (parity checks, not training)"

# The one place per device: {op: {path: Path(run, can_run ...)}}. Order inside an op is the order paths are
# listed in (`attn-zoo list`); which one `auto` takes is decided by the shape table, not by this order.
TABLE: dict[str, dict[str, dict[str, Path]]] = {
    "cpu": {
        "dense": {
            "reference": Path(dense.attention_reference),
            "sdpa": Path(dense.attention_sdpa),
            "flex": Path(dense.attention_flex, needs=_flex_import, forward_only=lambda d: _FLEX_CPU),
            "xformers": Path(dense.attention_xformers, needs=_cuda_only("xformers")),
        },
        "neighborhood": {
            "reference": Path(_na_reference),
            "cpu_fast": Path(_na_cpu_fast),
            "natten": Path(
                _na_natten,
                needs=_natten_import,
                forward_only=lambda d: _NATTEN_CPU,
                accepts=_natten_accepts,
                heads_last=True,
            ),
        },
    },
    "cuda": {
        "dense": {
            "reference": Path(dense.attention_reference),
            "sdpa": Path(dense.attention_sdpa),
            "flex": Path(dense.attention_flex, needs=_flex_import),
            "xformers": Path(dense.attention_xformers, needs=_installed("xformers")),
        },
        "neighborhood": {
            "reference": Path(_na_reference),
            "cpu_fast": Path(_na_cpu_fast),
            "natten": Path(
                _na_natten,
                needs=_natten_import,
                forward_only=_natten_cuda_limit,
                accepts=_natten_accepts,
                heads_last=True,
            ),
        },
    },
    # shapes only (no data): counting and sizing run models on the meta device
    "meta": {
        "dense": {"reference": Path(dense.attention_reference), "sdpa": Path(dense.attention_sdpa)},
        "neighborhood": {"reference": Path(_na_reference), "cpu_fast": Path(_na_cpu_fast)},
    },
}


def _paths(device: torch.device, op: str) -> dict[str, Path]:
    if device.type not in TABLE:
        raise BackendUnavailableError(
            f"no attention paths are known for device type {device.type!r}; known: {', '.join(TABLE)}"
        )
    if op not in TABLE[device.type]:
        raise UnknownNameError("attention op", op, OPS)
    return TABLE[device.type][op]


def _ops_with(name: str, device: torch.device) -> list[str]:
    ops = [op for op in OPS if name in _paths(device, op)]
    if not ops:
        raise UnknownNameError("backend", name, sorted({n for op in OPS for n in _paths(device, op)}))
    return ops


# -- availability -------------------------------------------------------------------------------------------------
def runs_reason(name: str, device: torch.device | str, op: str | None = None) -> str | None:
    """None if path ``name`` ran once here (forward, and backward unless it is forward only), else why not."""
    device = torch.device(device)
    if device.type not in TABLE:
        return f"no attention paths are known for device type {device.type!r}; known: {', '.join(TABLE)}"
    for o in [op] if op else _ops_with(name, device):
        paths = _paths(device, o)
        if name not in paths:
            raise UnknownNameError(f"{o} attention path", name, paths)
        reason = paths[name].can_run(o, name, device)
        if reason is not None:
            return reason
    return None


def unavailable_reason(name: str, device: torch.device | str, op: str | None = None) -> str | None:
    """None if path ``name`` is usable for training and ``auto`` on ``device``: it runs, forward and backward."""
    device = torch.device(device)
    if device.type in TABLE:
        for o in [op] if op else _ops_with(name, device):
            path = _paths(device, o).get(name)
            limit = path and (path.needs(device) or path.forward_only(device))
            if limit:
                return limit
    return runs_reason(name, device, op)


def availability(candidates: Sequence[str], device: torch.device | str = "cpu") -> dict[str, str | None]:
    """``{path: None or why it is not usable}`` for each candidate, for ``attn-zoo list``."""
    return {name: unavailable_reason(name, device) for name in candidates}


# -- the one choice ------------------------------------------------------------------------------------------------
def select(
    requested: str,
    offered: Sequence[str],
    device: torch.device | str,
    *,
    op: str,
    owner: str,
    call: Mapping[str, Any] | None = None,
) -> str:
    """The path a call will run. ``requested``: ``"auto"`` or a name from ``offered`` (the mechanism's paths).

    ``call`` describes the call (``n_q``, ``n_k`` keys per query, ``head_dim``, ``grad``; for neighbourhood
    attention ``border`` and ``kernel``): ``auto`` orders the paths by the measured shape table
    (:func:`attn_zoo.layers.auto_table.auto_order`) and takes the first usable one that accepts the call. A forced
    path that cannot run, or an ``auto`` with none, raises ``BackendUnavailableError`` naming why.

    Under a torch dispatch mode (``FlopCounterMode``) natten is replaced by ``cpu_fast`` (same inward attention,
    which carries a FLOP formula; natten has none and its CPU path refuses dispatch modes) and flex by
    ``reference`` (compiled flex fails under a dispatch mode): the returned name is then the replacement, so what
    is recorded is what runs.
    """
    device = torch.device(device)
    call = dict(call or {})
    mode = is_in_torch_dispatch_mode(include_infra_modes=False)
    key = (requested, tuple(offered), str(device), op, owner, mode, tuple(sorted(call.items())))
    if key not in _CHOICES:  # the answer depends only on the key: a forward pays for the choice once per shape
        _CHOICES[key] = _select(requested, offered, device, op, owner, call, mode)
    return _CHOICES[key]


_CHOICES: dict[tuple, str] = {}
# what runs instead under a torch dispatch mode (counting): the same attention, by a path that can be counted
_UNDER_DISPATCH_MODE = {"natten": "cpu_fast", "flex": "reference"}


def forget() -> None:
    """Drop the cached probes and choices (tests that change the table or what is installed)."""
    _PROBED.clear()
    _CHOICES.clear()


def _select(
    requested: str, offered: Sequence[str], device: torch.device, op: str, owner: str, call: dict, mode: bool
) -> str:
    from attn_zoo.layers.auto_table import auto_order

    paths = _paths(device, op)
    if requested != "auto":
        if requested not in offered:
            raise UnknownNameError(f"backend for {owner}", requested, ("auto", *offered))
        if requested not in paths:
            raise BackendUnavailableError(
                f"{owner}: backend {requested!r} cannot run on {device}: the dispatch table has no {op} path "
                f"{requested!r} for {device.type} (it has {', '.join(paths)})"
            )
        reason = runs_reason(requested, device, op) or paths[requested].accepts(call)
        if reason is not None:
            raise BackendUnavailableError(f"{owner}: backend {requested!r} cannot run on {device}: {reason}")
        if mode and requested in _UNDER_DISPATCH_MODE:
            return _UNDER_DISPATCH_MODE[requested]
        return requested
    why: dict[str, str] = {}
    for name in auto_order(op, device.type, call, [p for p in offered if p in paths], owner):
        reason = unavailable_reason(name, device, op) or paths[name].accepts(call)
        if reason is None and mode and name in _UNDER_DISPATCH_MODE:
            reason = f"runs as {_UNDER_DISPATCH_MODE[name]} under a dispatch mode"
        if reason is None:
            return name
        why[name] = reason
    detail = "; ".join(f"{n}: {r}" for n, r in why.items()) or f"it offers none of {', '.join(paths)}"
    raise BackendUnavailableError(f"{owner}: no attention path runs on {device} ({detail})")


# -- running, and recording what ran ----------------------------------------------------------------------------------
_RECORDERS: list[list[tuple[str, str, str]]] = []


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[str, str, str]]]:
    """Collect ``(op, path, device type)`` for every attention kernel that runs inside the block."""
    ran: list[tuple[str, str, str]] = []
    _RECORDERS.append(ran)
    try:
        yield ran
    finally:
        _RECORDERS.remove(ran)


def run(op: str, name: str, device: torch.device, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Execute the selected path ``name`` of ``op`` on ``device`` (already chosen by :func:`select`)."""
    paths = _paths(device, op)
    if name not in paths:
        raise UnknownNameError(f"{op} attention path", name, paths)
    for ran in _RECORDERS:
        ran.append((op, name, device.type))
    return paths[name].run(*args, **kwargs)


def takes_heads_last(op: str, name: str, device: torch.device) -> bool:
    """Whether path ``name`` of ``op`` on ``device`` takes ``(B, H, W, heads, d)`` (natten's layout), so a caller
    whose tensors come that way passes them with ``heads_last=True`` and pays no layout copy."""
    path = _paths(device, op).get(name)
    return path is not None and path.heads_last


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    bias: torch.Tensor | None = None,
    backend: str = "reference",
) -> torch.Tensor:
    """Attention over all key positions with path ``backend``: a name, or ``"auto"`` (the dispatch table's choice
    for these shapes, :func:`select`); a path that cannot run here is an error."""
    call = dense.dense_call(q, k, v, bias)
    offered = tuple(TABLE.get(q.device.type, {}).get("dense", ()))
    name = select(backend, offered, q.device, op="dense", owner="dense attention", call=call)
    return run("dense", name, q.device, q, k, v, scale=scale, bias=bias)


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: tuple[int, int] | int,
    dilation: tuple[int, int] | int = (1, 1),
    *,
    scale: float,
    border: str = "zero",
    backend: str = "auto",
    heads_last: bool = False,
) -> torch.Tensor:
    """2-D dilated neighbourhood attention.

    Args:
        q: queries, ``(B, heads, H, W, d_qk)`` (``(B, H, W, heads, d_qk)`` with ``heads_last``).
        k: keys, ``(B, heads, H, W, d_qk)`` (``(B, H, W, heads, d_qk)`` with ``heads_last``).
        v: values, ``(B, heads, H, W, d_v)`` (``(B, H, W, heads, d_v)`` with ``heads_last``).
        kernel_size: ``(k_h, k_w)``, each odd and >= 1; rectangular windows such as ``(5, 1)`` are
            allowed. An int means a square window.
        dilation: ``(d_h, d_w)``, each >= 1 (an int means the same on both axes).
        scale: the logit scale, usually ``d_qk ** -0.5``.
        border: ``"zero"`` (default), ``"masked"`` or ``"inward"``; see below.
        backend: ``"auto"``, ``"reference"``, ``"cpu_fast"`` or ``"natten"``.
        heads_last: q, k, v (and the output) are ``(B, H, W, heads, d)``, natten's layout, e.g. views of a
            ``(B, H, W, heads * d)`` projection. Each path gets the layout it takes (``Path.heads_last``):
            natten then runs on the caller's tensors with no layout copy, the others on heads-first views.

    Returns:
        ``(B, heads, H, W, d_v)`` (``(B, H, W, heads, d_v)`` with ``heads_last``), in the dtype of ``q``.

    Semantics. With ``r_h = (k_h - 1) // 2`` and ``r_w = (k_w - 1) // 2``, the neighbours of query
    ``(i, j)`` are the ``k_h * k_w`` positions ``(i + (a - r_h) * d_h, j + (b - r_w) * d_w)`` for
    ``0 <= a < k_h``, ``0 <= b < k_w``. The logits are ``scale * q[i, j] . k[neighbour]``; the softmax runs
    over the ``k_h * k_w`` neighbours; the output is the probability-weighted sum of the neighbours' ``v``.
    What a neighbour outside the image means depends on ``border``:

    * ``"zero"`` (DilateFormer's official behaviour): it is a zero key and a zero value that still takes
      part in the softmax, with logit exactly 0 and value 0. This is what ``nn.Unfold`` with zero padding
      ``d * (k - 1) / 2`` gives. Any ``H, W`` is allowed, even smaller than the window.
    * ``"masked"``: it is left out of the softmax (the query itself is always a neighbour, so the softmax
      never becomes empty). Any ``H, W`` is allowed.
    * ``"inward"`` (NAT/DiNAT, natten's definition, stride 1, non-causal): along each axis the map of size
      ``n`` splits into ``d`` interleaved sub-grids (positions with the same ``x mod d``); inside its
      sub-grid, of ``n_g`` positions, a query at sub-grid index ``x // d`` uses the window centred at
      ``clamp(x // d, r, n_g - 1 - r)``, i.e. the window is shifted inward at the border so every query
      has ``k_h * k_w`` real neighbours. Requires ``H >= k_h * d_h`` and ``W >= k_w * d_w`` (natten's
      condition: it makes every sub-grid at least one window long); otherwise ``MechanismInputError``.

    Gradients flow to ``q``, ``k`` and ``v`` on the ``reference`` and ``cpu_fast`` backends (first order
    only on ``cpu_fast``). ``natten`` has no backward on CPU (its flex path), so it refuses inputs that
    require grad there.

    FLOPs: ``FlopCounterMode`` counts ``2 * B * heads * H * W * k_h * k_w * (d_qk + d_v)`` for the forward
    (see :func:`neighborhood_attention_macs`) and twice that for the backward on both the ``reference``
    and ``cpu_fast`` backends; out-of-image neighbours are counted too, as the unfold formulation
    computes them. Under a dispatch mode (FlopCounterMode) a natten call runs as ``cpu_fast``, the same
    inward attention with a formula, so the count never depends on the backend.

    Raises:
        MechanismInputError: wrong rank, mismatched shapes/dtypes/devices, even or non-positive kernel,
            dilation < 1, non-finite scale, an ``"inward"`` map smaller than kernel * dilation, or a
            natten-only constraint (border other than ``"inward"``, a kernel dimension of 1).
        UnknownNameError: unknown ``border`` or ``backend``.
        BackendUnavailableError: ``backend="natten"`` when natten is not importable, when inputs require
            grad on CPU, or when natten has no kernel for the call (on CPU its flex path needs
            ``d_qk == d_v``, a power of two in [8, 512], and float32/16); the message says which.
    """
    to_first, to_last = (0, 3, 1, 2, 4), (0, 2, 3, 1, 4)  # heads-last <-> heads-first, as views
    if heads_last:
        q, k, v = (t.permute(*to_first) for t in (q, k, v))
    kernel, dil = nb._validate(q, k, v, kernel_size, dilation, scale, border, backend)
    chosen = choose_backend(backend, q, border, kernel)
    path_heads_last = _paths(q.device, "neighborhood")[chosen].heads_last
    if path_heads_last:
        q, k, v = (t.permute(*to_last) for t in (q, k, v))
    out = run("neighborhood", chosen, q.device, q, k, v, kernel, dil, float(scale), border)
    if path_heads_last != heads_last:
        out = out.permute(*(to_first if path_heads_last else to_last))
    return out


def choose_backend(backend: str, q: torch.Tensor, border: str, kernel: tuple[int, int]) -> str:
    """The concrete backend a call with ``backend`` runs: the dispatch table's choice
    (:func:`attn_zoo.layers.backends.select`) for this call; a forced ``"natten"`` is checked against the call.

    Under a dispatch mode such as ``FlopCounterMode`` natten becomes ``cpu_fast`` (same inward attention):
    natten's kernels carry no FLOP formula and its CPU flex path refuses to run under a dispatch mode, while
    ``cpu_fast`` is counted by its registered formula, so counts never depend on the backend.
    """
    if backend == "natten":
        nb._check_natten_call(border, kernel)
    call = nb.na_call(q, border, kernel)
    return select(backend, nb.BACKENDS[1:], q.device, op="neighborhood", owner="neighborhood attention", call=call)


def available_backends(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """Which concrete backends are usable on ``device``: ``{name: None}`` if one is, else ``{name: reason}``.

    The dispatch table's answer (:mod:`attn_zoo.layers.backends`): a path is usable when its kernel ran once
    here, forward and backward. ``natten`` counts only where it is a real fast path: CUDA with natten's compiled
    kernels (libnatten). On CPU natten runs its unfused flex path, forward only, so it is reported with that
    reason; forcing ``backend="natten"`` still runs it there (without gradients), as the parity tests do.
    """
    return {name: unavailable_reason(name, device, "neighborhood") for name in nb.BACKENDS[1:]}
