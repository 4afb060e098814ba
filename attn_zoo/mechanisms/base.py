"""The one contract every token mixer follows.

A mixer takes the tokens of one stage as ``(B, H, W, C)`` and returns the same shape. Anything a mechanism
shares across the blocks of a stage (GC-ViT's global query) is built once per stage by
:meth:`Mixer.build_context` and passed explicitly as ``context``; nothing is hidden in globals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from attn_zoo.errors import MechanismInputError, UnknownNameError
from attn_zoo.layers import backends, neighborhood
from attn_zoo.layers.attention import dense_call


class Mixer(nn.Module):
    """Base class of all token mixers: ``(B, H, W, C) -> (B, H, W, C)``.

    Subclasses declare their knobs as keyword-only constructor arguments with type hints and defaults;
    the registry reads them from the signature, so a knob is declared exactly once.

    Class attributes a subclass may set:
        block_pattern: knob values cycled over the blocks of a stage where the mechanism appears
            (Swin's W-MSA / SW-MSA pair is ``({"shift": False}, {"shift": True})``). User knobs override.
        stage_defaults: per-stage defaults from the paper (``{"r_n": (8, 4, 2, 1)}``); stages past the end
            reuse the last value. User knobs override.
        backends: the attention paths this mechanism offers. Whether one runs here is the dispatch table's
            answer, and which one ``backend="auto"`` takes is the measured shape table's, for the call's shapes
            (:func:`attn_zoo.layers.backends.select`; docs/backends.md).
        op: the attention op the mechanism calls: ``"dense"`` (:func:`attn_zoo.layers.backends.dense_attention`,
            through :meth:`attend`) or ``"neighborhood"`` (:func:`attn_zoo.layers.backends.neighborhood_attention`).
        paper: one line naming the paper and the official code it follows.
        ignores: what the output does not depend on by design, each with the reason, e.g.
            ``{"channels": "only the first C/2 channels are mixed"}``; keys ``positions``, ``channels``,
            ``context``. Set it in ``__init__`` instead when it depends on the knobs. The conformance kit's
            ``dependence`` check exempts these and says so.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    block_pattern: ClassVar[Sequence[Mapping[str, Any]]] = ({},)
    stage_defaults: ClassVar[Mapping[str, Sequence[Any]]] = {}
    backends: ClassVar[tuple[str, ...]] = ("reference",)
    op: ClassVar[str] = "dense"
    ignores: ClassVar[Mapping[str, str]] = {}

    def __init__(self, dim: int, num_heads: int, *, feat_size: tuple[int, int] | None = None):
        super().__init__()
        label = self.name or type(self).__name__
        if dim <= 0 or num_heads <= 0:
            raise MechanismInputError(f"{label}: dim and num_heads must be positive, got {dim}, {num_heads}")
        if dim % num_heads:
            raise MechanismInputError(f"{label}: channels ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.feat_size = tuple(feat_size) if feat_size is not None else None
        self.backend = "auto"
        self.last_backend: str | None = None

    # -- the contract -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def build_context(
        cls, dim: int, num_heads: int, feat_size: tuple[int, int] | None, knobs: Mapping[str, Any]
    ) -> nn.Module | None:
        """Per-stage context module, run once on the stage input; ``None`` when the mechanism needs none."""
        return None

    @property
    def uses_context(self) -> bool:
        """Whether this block reads the per-stage context; the harness builds a stage's context only if one does
        (GC-ViT's local blocks do not, so an all-local ablation carries no global query generator)."""
        return True

    @classmethod
    def validate_knobs(cls, knobs: Mapping[str, Any]) -> None:
        """Check value constraints of resolved knobs (types are already checked); raise ``KnobError``."""

    @classmethod
    def check_backend(cls, backend: str, knobs: Mapping[str, Any]) -> None:
        """Refuse a forced ``backend`` that cannot compute these resolved ``knobs`` (raise ``KnobError``), so a
        config fails before any compute; e.g. natten only shifts windows inward. Names are checked elsewhere."""

    @classmethod
    def auto_candidates(cls, device: torch.device | str, call: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """The order ``backend="auto"`` tries on ``device`` for a call like ``call`` (the shape table's order)."""
        from attn_zoo.layers.auto_table import auto_order

        return auto_order(cls.op, torch.device(device).type, dict(call or {}), cls.backends, cls.name)

    def attention_macs(self, height: int, width: int) -> int:
        """Analytic multiply-accumulates of this mixer for one image at a ``height x width`` stage map."""
        raise NotImplementedError(f"{type(self).__name__} declares no attention-MACs formula")

    # -- helpers for subclasses ---------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor, min_size: int = 1) -> tuple[int, int, int, int]:
        """Validate ``x`` against the contract and return ``(B, H, W, C)``."""
        label = self.name or type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise MechanismInputError(f"{label}: expected tokens of shape (B, H, W, C), got {shape}")
        B, H, W, C = x.shape
        if self.dim != C:
            raise MechanismInputError(
                f"{label}: expected {self.dim} channels in the last dimension, got {C} (shape {tuple(x.shape)})"
            )
        if min_size > H or min_size > W:
            raise MechanismInputError(f"{label}: the map must be at least {min_size}x{min_size}, got {H}x{W}")
        return B, H, W, C

    def set_backend(self, backend: str) -> None:
        """Force an attention path by name (``"auto"`` picks the best available one at call time)."""
        allowed = ("auto", *self.backends)
        if backend not in allowed:
            raise UnknownNameError(f"backend for {self.name or type(self).__name__}", backend, allowed)
        self.backend = backend

    def pick_backend(self, x: torch.Tensor, call: Mapping[str, Any] | None = None) -> str:
        """The attention path a call on ``x``'s device runs: the dispatch table's choice for ``call`` (the call's
        shapes; :func:`attn_zoo.layers.backends.select`), recorded in ``last_backend``. A path that cannot run
        raises ``BackendUnavailableError``."""
        label = self.name or type(self).__name__
        name = backends.select(self.backend, self.backends, x.device, op=self.op, owner=label, call=call)
        self.last_backend = name
        return name

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Dense attention with the path chosen for these shapes (recorded in ``last_backend``)."""
        name = self.pick_backend(q, dense_call(q, k, v, bias))
        return backends.run("dense", name, q.device, q, k, v, scale=scale, bias=bias)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, backend={self.backend}"


class NeighborhoodMixer(Mixer):
    """A mixer whose attention is :func:`attn_zoo.layers.backends.neighborhood_attention` (MSDA,
    MSA-Conv): it has ``border`` and ``kernel`` knobs, a forced backend is checked against them (natten needs
    ``border="inward"``), and the concrete path chosen here (never ``"auto"``) is what the kernel runs."""

    border: str
    kernel: Any
    op: ClassVar[str] = "neighborhood"

    @classmethod
    def check_backend(cls, backend: str, knobs: Mapping[str, Any]) -> None:
        neighborhood.check_mixer_backend(cls.name, backend, knobs.get("border", "zero"), knobs.get("kernel", 3))

    def set_backend(self, backend: str) -> None:
        self.check_backend(backend, {"border": self.border, "kernel": self.kernel})
        super().set_backend(backend)

    def pick_backend(self, x: torch.Tensor, call: Mapping[str, Any] | None = None) -> str:
        """The path of the neighbourhood calls on ``x`` (``call`` defaults to this mixer's kernel calls on ``x``)."""
        if call is None:
            kernel = tuple(self.kernel) if not isinstance(self.kernel, int) else (self.kernel, self.kernel)
            seqs, tokens = self.neighborhood_call_size(*x.shape[:3])
            call = {"n_q": tokens, "n_k": kernel[0] * kernel[1], "head_dim": self.head_dim, "seqs": seqs}
            call.update(border=self.border, kernel=kernel, grad=torch.is_grad_enabled() and x.requires_grad)
        return super().pick_backend(x, call)

    def neighborhood_call_size(self, batch: int, height: int, width: int) -> tuple[int, int]:
        """``(sequences, tokens)`` of one kernel call for a ``batch x height x width`` input: ``B * heads`` maps of
        ``H * W`` tokens (MSDA calls once per dilation group, MSA-Conv on an inter-pooled grid: they override)."""
        return batch * self.num_heads, height * width
