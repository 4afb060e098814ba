"""Classifier heads on pooled features ``(B, C) -> (B, num_classes)``."""

from __future__ import annotations

from torch import nn

from attn_zoo.errors import UnknownNameError

HEADS = ("linear", "mlp")


def build_head(kind: str, dim: int, num_classes: int, hidden: int = 4096, eps: float = 1e-5) -> nn.Module:
    """``linear``: Linear(C, classes). ``mlp``: ScalableViT's Linear(C, hidden) -> LN -> GELU -> Linear."""
    if num_classes == 0:
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(dim, num_classes)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(dim, hidden), nn.LayerNorm(hidden, eps=eps), nn.GELU(), nn.Linear(hidden, num_classes)
        )
    raise UnknownNameError("head", kind, HEADS)
