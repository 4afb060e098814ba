"""attn_zoo: a comparative benchmark suite for vision-transformer attention mechanisms.

Python API: :func:`list_mechanisms`, :func:`create_mechanism`, :func:`create_model`.

The names are imported on first use (module ``__getattr__``), so importing ``attn_zoo.cli`` or
``attn_zoo.errors`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "create_mechanism": "attn_zoo.registry",
    "list_mechanisms": "attn_zoo.registry",
    "register_mechanism": "attn_zoo.registry",
    "create_model": "attn_zoo.backbone.presets",
    "list_presets": "attn_zoo.backbone.presets",
}

if TYPE_CHECKING:
    from attn_zoo.backbone.presets import create_model, list_presets
    from attn_zoo.registry import create_mechanism, list_mechanisms, register_mechanism


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attn_zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", "create_mechanism", "create_model", "list_mechanisms", "list_presets", "register_mechanism"]
