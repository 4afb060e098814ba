"""What a run's data is: :class:`DataConfig` (source, subset sizes, augmentation, source options) and the
augmentations it may name. Validated once, against the registered sources (:mod:`attn_zoo.data.sources`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from attn_zoo.data.sources import SOURCES
from attn_zoo.errors import ConfigError, UnknownNameError

__all__ = ["AUGMENTATIONS", "TIMM_AUG_KEYS", "DataConfig"]

AUGMENTATIONS = ("none", "flip", "light", "timm")
TIMM_AUG_KEYS = {
    "scale": (0.5, 1.0),
    "ratio": None,
    "hflip": 0.5,
    "vflip": 0.0,
    "color_jitter": 0.4,
    "auto_augment": None,
    "interpolation": "bilinear",
    "re_prob": 0.0,
    "re_mode": "const",
    "re_count": 1,
    "train_crop_mode": None,
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data and how much of it. ``options`` holds source-specific settings (e.g. ``difficulty``);
    ``aug`` holds ``timm.data.create_transform`` settings for ``augment = "timm"``."""

    source: str = "synthetic"
    root: str | None = None
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    subset_seed: int | None = None
    augment: str = "light"
    aug: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    num_workers: int = 0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataConfig:
        """Known fields go to fields, everything else to the source's ``options`` (checked by the source)."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"options"}
        known = {k: v for k, v in data.items() if k in fields}
        options = {k: v for k, v in data.items() if k not in fields and k != "options"}
        options.update(data.get("options") or {})
        config = cls(**known, options=options)
        config.validate()
        return config

    def validate(self) -> DataConfig:
        if self.source not in SOURCES:
            raise UnknownNameError("data source", self.source, SOURCES)
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"data augment {self.augment!r} unknown; allowed: {', '.join(AUGMENTATIONS)}")
        for key in ("train_size", "val_size", "test_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"data {key} must be a positive integer, got {value!r}")
        for key in ("subset_seed", "num_workers"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"data {key} must be a non-negative integer, got {value!r}")
        if not isinstance(self.aug, Mapping):
            raise ConfigError(f"data aug must be a table of create_transform settings, got {self.aug!r}")
        unknown = set(self.aug) - set(TIMM_AUG_KEYS)
        if unknown:
            raise ConfigError(
                f"data aug: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(TIMM_AUG_KEYS))}"
            )
        if self.aug and self.augment != "timm":
            raise ConfigError(f'data aug settings apply only with augment = "timm" (augment is {self.augment!r})')
        SOURCES[self.source].validate(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("options", "aug")}
        if self.aug:
            out["aug"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.aug.items()}
        return {**out, **dict(self.options)}
