"""Named model configurations: the papers' models (faithfulness checks) and the harness family (fair
comparison). One module per family in this package; each registers its presets on import."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from attn_zoo.backbone.config import ModelConfig
from attn_zoo.names import Registry


def _load_builtins() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_PRESETS: Registry[Callable[[], ModelConfig]] = Registry("preset", unique=True, load=_load_builtins)
_DOCS: dict[str, str] = {}  # name -> one-line description


def register_preset(name: str, doc: str = "") -> Callable[[Callable[[], ModelConfig]], Callable[[], ModelConfig]]:
    """Decorator for a zero-argument function returning the preset's :class:`ModelConfig`."""

    def wrap(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
        _PRESETS.add(name, fn)
        _DOCS[name] = doc or (fn.__doc__ or "").strip().split("\n")[0]
        return fn

    return wrap


def list_presets() -> dict[str, str]:
    """``{name: one-line description}``."""
    return {name: _DOCS[name] for name in sorted(_PRESETS)}


def get_preset(name: str) -> ModelConfig:
    return _PRESETS[name]()


def resolve_config(preset_or_config: str | ModelConfig | Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """A preset name, a config, or a plain dict (optionally with ``preset`` as the base) -> ModelConfig."""
    if isinstance(preset_or_config, str):
        config = get_preset(preset_or_config)
    elif isinstance(preset_or_config, ModelConfig):
        config = preset_or_config
    else:
        data = dict(preset_or_config)
        base = data.pop("preset", None)
        config = ModelConfig.from_dict({**(get_preset(base).to_dict() if base else {}), **data})
    return config.replace(**overrides) if overrides else config


def create_model(preset_or_config: str | ModelConfig | Mapping[str, Any], **overrides: Any):
    """Build the harness model for a preset name or config, e.g. ``create_model("swin_t", num_classes=10)``."""
    from attn_zoo.backbone.harness import Backbone

    return Backbone(resolve_config(preset_or_config, **overrides))
