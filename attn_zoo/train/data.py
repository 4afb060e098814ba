"""Data sources by name, behind timm's transforms and torch's loaders.

A source builds a ``Dataset`` of ``(PIL image, label)`` for a split; :func:`create_loaders` applies the
transform (timm's ``create_transform`` for the standard recipe, or a light crop/flip for small images) and
returns seeded loaders, so the same seed gives the same batches on CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from attn_zoo.errors import ConfigError, UnknownNameError

AUGMENTATIONS = ("none", "light", "timm")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data and how much of it. ``options`` holds source-specific settings (e.g. ``difficulty``)."""

    source: str = "synthetic"
    root: str | None = None
    train_size: int | None = None
    val_size: int | None = None
    augment: str = "light"
    num_workers: int = 0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataConfig:
        fields = {f.name for f in dataclasses.fields(cls)} - {"options"}
        known = {k: v for k, v in data.items() if k in fields}
        options = {k: v for k, v in data.items() if k not in fields}
        config = cls(**known, options=options)
        config.validate()
        return config

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise UnknownNameError("data source", self.source, SOURCES)
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"data augment {self.augment!r} unknown; allowed: {', '.join(AUGMENTATIONS)}")
        for key in ("train_size", "val_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"data {key} must be a positive integer, got {value!r}")
        SOURCES[self.source].check(self)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return {**out, **dict(self.options)}


@dataclasses.dataclass(frozen=True)
class Source:
    """A registered data source: ``build(config, split, seed) -> (dataset, info)``; ``check`` validates."""

    name: str
    build: Callable[[DataConfig, str, int], tuple[Dataset, dict[str, Any]]]
    check: Callable[[DataConfig], None]
    doc: str


SOURCES: dict[str, Source] = {}


def register_source(name: str, doc: str, check: Callable[[DataConfig], None] | None = None):
    def wrap(build):
        SOURCES[name] = Source(name, build, check or (lambda config: None), doc)
        return build

    return wrap


class ArrayDataset(Dataset):
    """In-memory uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` with labels, served as PIL images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        self.images, self.labels, self.transform = images, labels.astype(np.int64), transform
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])


def _check_synthetic(config: DataConfig) -> None:
    extra = set(config.options) - {"resolution", "classes"}
    if extra:
        raise ConfigError(f"data source 'synthetic': unknown options {sorted(extra)}; allowed: resolution, classes")


@register_source("synthetic", "oriented bars in noise (4 classes); generated, for smoke tests", _check_synthetic)
def _synthetic(config: DataConfig, split: str, seed: int) -> tuple[Dataset, dict[str, Any]]:
    res = int(config.options.get("resolution", 32))
    n = (config.train_size or 2000) if split == "train" else (config.val_size or 500)
    rng = np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split]])
    labels = rng.integers(0, 4, size=n)
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32) / res
    images = rng.normal(0.3, 0.1, size=(n, res, res)).astype(np.float32)
    for i, label in enumerate(labels):
        offset = rng.uniform(0.2, 0.8)
        coord = {0: yy, 1: xx, 2: (xx + yy) / 2, 3: (xx - yy + 1) / 2}[int(label)]
        images[i] += 0.6 * (np.abs(coord - offset) < 0.08)
    images = (np.clip(images, 0, 1) * 255).astype(np.uint8)
    return ArrayDataset(images, labels), {"num_classes": 4, "in_chans": 1, "mean": (0.5,), "std": (0.25,)}


def build_transform(config: DataConfig, info: Mapping[str, Any], img_size: int, training: bool):
    """timm's transform for ``augment = "timm"``; otherwise resize (+ random crop with padding and flip when
    ``augment = "light"`` and training) then normalise."""
    from torchvision import transforms as T

    mean, std = info["mean"], info["std"]
    if config.augment == "timm":
        from timm.data import create_transform

        return create_transform(
            input_size=(info["in_chans"], img_size, img_size),
            is_training=training,
            mean=mean,
            std=std,
            scale=(0.5, 1.0),
            crop_pct=1.0,
        )
    steps: list[Any] = [T.Resize((img_size, img_size))]
    if training and config.augment == "light":
        steps += [T.RandomCrop(img_size, padding=img_size // 8), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def create_loaders(
    config: DataConfig, *, img_size: int, batch_size: int, seed: int, eval_batch_size: int | None = None
) -> tuple[DataLoader, DataLoader, dict[str, Any]]:
    """Seeded train and validation loaders plus ``info`` (num_classes, in_chans, mean, std, sizes)."""
    source = SOURCES[config.source]
    train_set, info = source.build(config, "train", seed)
    val_set, _ = source.build(config, "val", seed)
    train_set.transform = build_transform(config, info, img_size, training=True)
    val_set.transform = build_transform(config, info, img_size, training=False)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=generator,
        num_workers=config.num_workers,
    )
    val = DataLoader(
        val_set, batch_size=eval_batch_size or batch_size * 2, shuffle=False, num_workers=config.num_workers
    )
    info = {**info, "train_size": len(train_set), "val_size": len(val_set)}
    return train, val, info
