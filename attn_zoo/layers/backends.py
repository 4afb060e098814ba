"""Which attention paths can run here, and why not when they cannot.

Every fast path registers an availability check; mechanisms list the paths they can use (best first) and
``resolve_backend`` picks the first one available on the input's device when the user asks for ``"auto"``.
The chosen name is recorded on the mixer (``last_backend``) and in every result row.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

import torch

from attn_zoo.errors import BackendUnavailableError, UnknownNameError

Check = Callable[[torch.device], str | None]
# name -> function(device) returning None when the path is a usable fast path on that device, else why not
_CHECKS: dict[str, Check] = {}
# name -> function(device) returning None when a forced run can execute at all (e.g. natten's forward-only
# CPU path, used for parity checks), else why not; defaults to the check above
_RUNS: dict[str, Check] = {}


def register_backend(name: str, check: Check, runs: Check | None = None) -> None:
    _CHECKS[name] = check
    _RUNS[name] = runs or check


def unavailable_reason(name: str, device: torch.device | str) -> str | None:
    """``None`` if backend ``name`` can run on ``device``, else a short reason."""
    if name not in _CHECKS:
        raise UnknownNameError("backend", name, _CHECKS)
    return _CHECKS[name](torch.device(device))


def resolve_backend(
    requested: str,
    candidates: Sequence[str],
    device: torch.device | str,
    owner: str,
    auto_order: Sequence[str] | None = None,
) -> str:
    """The backend to run: ``requested`` if it can run, or for ``auto`` the first available one of ``auto_order``
    (default ``candidates``, best first)."""
    device = torch.device(device)
    if requested == "auto":
        for name in auto_order or candidates:
            if unavailable_reason(name, device) is None:
                return name
        raise BackendUnavailableError(f"{owner}: no attention path runs on {device} (tried {list(candidates)})")
    if requested not in candidates:
        raise UnknownNameError(f"backend for {owner}", requested, ("auto", *candidates))
    reason = _RUNS[requested](device)
    if reason is not None:
        raise BackendUnavailableError(f"{owner}: backend {requested!r} cannot run on {device}: {reason}")
    return requested


def availability(candidates: Sequence[str], device: torch.device | str = "cpu") -> dict[str, str | None]:
    """``{backend: None or reason}`` for each candidate, for ``attn-zoo list``."""
    return {name: unavailable_reason(name, device) for name in candidates}


def runs_reason(name: str, device: torch.device | str) -> str | None:
    """``None`` if a forced ``name`` can execute on ``device`` at all (e.g. a forward-only parity path), else why."""
    if name not in _RUNS:
        raise UnknownNameError("backend", name, _RUNS)
    return _RUNS[name](torch.device(device))


def _always(device: torch.device) -> str | None:
    return None


def _cuda_only(package: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed"
        if device.type != "cuda":
            return f"{package} has no kernels for {device.type} here (CUDA only)"
        return None

    return check


def _flex_import_error() -> str | None:
    try:
        import torch.nn.attention.flex_attention
    except ImportError as exc:  # pragma: no cover - present in the pinned torch
        return f"torch {torch.__version__} has no flex_attention ({exc})"
    return None


def _flex(device: torch.device) -> str | None:
    if device.type != "cuda":
        # eager flex_attention on CPU computes every query-key pair and has no backward: not a fast path
        return "flex_attention is a fast path only on CUDA (on CPU: eager, every pair, forward only)"
    return _flex_import_error()


def _flex_runs(device: torch.device) -> str | None:
    """A forced ``flex`` runs on CUDA, and on CPU forward only (the parity tests); the call refuses gradients."""
    if device.type not in ("cuda", "cpu"):
        return f"flex_attention has no kernels for {device.type} here"
    return _flex_import_error()


register_backend("reference", _always)
register_backend("sdpa", _always)
register_backend("xformers", _cuda_only("xformers"))
register_backend("flex", _flex, runs=_flex_runs)
