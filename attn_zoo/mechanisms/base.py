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
from attn_zoo.layers import neighborhood
from attn_zoo.layers.backends import resolve_backend


class Mixer(nn.Module):
    """Base class of all token mixers: ``(B, H, W, C) -> (B, H, W, C)``.

    Subclasses declare their knobs as keyword-only constructor arguments with type hints and defaults;
    the registry reads them from the signature, so a knob is declared exactly once.

    Class attributes a subclass may set:
        block_pattern: knob values cycled over the blocks of a stage where the mechanism appears
            (Swin's W-MSA / SW-MSA pair is ``({"shift": False}, {"shift": True})``). User knobs override.
        stage_defaults: per-stage defaults from the paper (``{"r_n": (8, 4, 2, 1)}``); stages past the end
            reuse the last value. User knobs override.
        backends: the attention paths this mechanism can run, best first for ``backend="auto"``.
        auto_order: per device type (``"cpu"``, ``"cuda"``), the order ``"auto"`` tries there when it differs
            from ``backends`` (e.g. window attention of 49 tokens is faster unfused on CPU); measured, see
            docs/backends.md.
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
    auto_order: ClassVar[Mapping[str, tuple[str, ...]]] = {}
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
    def auto_candidates(cls, device: torch.device | str) -> tuple[str, ...]:
        """The order ``backend="auto"`` tries on ``device``: ``auto_order[device type]`` or ``backends``."""
        return tuple(cls.auto_order.get(torch.device(device).type, cls.backends))

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

    def pick_backend(self, x: torch.Tensor) -> str:
        """The attention path to run for input ``x`` (records it in ``last_backend``)."""
        label = self.name or type(self).__name__
        name = resolve_backend(self.backend, self.backends, x.device, label, self.auto_candidates(x.device))
        self.last_backend = name
        return name

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, backend={self.backend}"


class NeighborhoodMixer(Mixer):
    """A mixer whose attention is :func:`attn_zoo.layers.neighborhood.neighborhood_attention` (MSDA,
    MSA-Conv): it has ``border`` and ``kernel`` knobs, a forced backend is checked against them (natten needs
    ``border="inward"``), and ``"auto"`` is the kernel's own choice, asked of the kernel so the recorded name
    cannot drift from what runs (natten on CUDA for "inward" with libnatten, else cpu_fast)."""

    border: str
    kernel: Any

    @classmethod
    def check_backend(cls, backend: str, knobs: Mapping[str, Any]) -> None:
        neighborhood.check_mixer_backend(cls.name, backend, knobs.get("border", "zero"), knobs.get("kernel", 3))

    def set_backend(self, backend: str) -> None:
        self.check_backend(backend, {"border": self.border, "kernel": self.kernel})
        super().set_backend(backend)

    def pick_backend(self, x: torch.Tensor) -> str:
        if self.backend != "auto":
            return super().pick_backend(x)  # checks that the forced path runs on x's device
        self.last_backend = neighborhood.choose_backend("auto", x, self.border, self.kernel)
        return "auto"
