"""Decoded-once images: a split's images decoded (and put through the deterministic head of its transform) one
time, kept as uint8 arrays, instead of being decoded again for every epoch.

A source whose images come from files (timm's tar and folder readers: ``cifar10_jpeg``, ``imagefolder``) is
decoded into a memory-mapped ``.npy`` under ``<cache dir>/decoded/<key>/`` (the cache directory of
:func:`attn_zoo.paths.cache_dir`: ``--cache-dir``, ``$ATTN_ZOO_CACHE``, the user cache directory); the key is a
sha256 over what the bytes depend on: the source, its root and options, the split, the files (path, size and
modification time of each), the items decoded, the transform head and :data:`CACHE_VERSION`. Writes pass
:func:`attn_zoo.paths.writable` and are atomic (temporary file, then rename); ``meta.json`` is written last and
holds the array's sha256, so a partial or corrupt entry fails to verify and is rebuilt. A generated or
in-memory source (Pathfinder, synthetic, torchvision's CIFAR, Fashion-MNIST) is decoded into memory.

The decoded image of an item equals, byte for byte, what the per-sample path hands to the random part of its
transform (the head's output as a PIL image of mode ``L`` or ``RGB``): see docs/data.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["CACHE_VERSION", "Decoded", "NotCacheable", "decode_split", "source_files"]

CACHE_VERSION = 1
MODES = ("L", "RGB")


class NotCacheable(Exception):
    """The split cannot be held as one uint8 array (images of different sizes, or a mode other than L / RGB)."""


@dataclasses.dataclass(frozen=True)
class Decoded:
    """``images[r]`` is the decoded item ``indices[r]`` of the base dataset (``indices`` sorted, unique);
    ``mode`` the PIL mode they had; ``path`` the ``.npy`` file when memory-mapped, else None."""

    indices: np.ndarray
    images: np.ndarray
    mode: str
    path: Path | None = None

    def rows(self, items: Sequence[int] | np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        rows = np.searchsorted(self.indices, items)
        if rows.size and (rows.max() >= len(self.indices) or not np.array_equal(self.indices[rows], items)):
            raise KeyError("decoded cache: an item outside the decoded ones was asked for")
        return rows


def source_files(dataset: Dataset) -> Path | None:
    """The file or directory a file-backed dataset reads (timm's ``ImageDataset`` reader root), else None
    (the dataset holds its images in memory, or we cannot tell where they come from)."""
    reader = getattr(dataset, "reader", None)
    root = getattr(reader, "root", None)
    if isinstance(root, (str, os.PathLike)) and Path(root).exists():
        return Path(root).resolve()
    return None


def _files_fingerprint(root: Path) -> list[list[Any]]:
    """(relative path, size, mtime_ns) of ``root`` (a file) or of every file under it (a directory)."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    out = []
    for path in paths:
        stat = path.stat()
        out.append([path.relative_to(root).as_posix() if path != root else path.name, stat.st_size, stat.st_mtime_ns])
    return out


def _decode(
    dataset: Dataset, indices: np.ndarray, head: Callable[[Image.Image], Image.Image] | None
) -> tuple[np.ndarray, str]:
    first_shape, mode, out = None, None, None
    for r, item in enumerate(indices):
        img = dataset[int(item)][0]
        if head is not None:
            img = head(img)
        if not isinstance(img, Image.Image) or img.mode not in MODES:
            raise NotCacheable(f"item {int(item)} is not a PIL image of mode L or RGB")
        array = np.asarray(img)
        if out is None:
            first_shape, mode = array.shape, img.mode
            out = np.empty((len(indices), *array.shape), dtype=np.uint8)
        elif array.shape != first_shape or img.mode != mode:
            raise NotCacheable(f"item {int(item)} has shape {array.shape} (mode {img.mode}), the first {first_shape}")
        out[r] = array
    if out is None:
        raise NotCacheable("no items")
    return out, str(mode)


def _digest(images: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(repr((images.shape, str(images.dtype))).encode())
    flat = np.ascontiguousarray(images).reshape(-1)
    step = 1 << 24
    for start in range(0, flat.size, step):
        h.update(memoryview(flat[start : start + step]))
    return h.hexdigest()


def _load(directory: Path, key: str) -> Decoded | None:
    """The entry in ``directory`` when its meta and array verify, else None (a missing entry says nothing; a
    bad one warns, and is rebuilt by the caller)."""
    meta_path, array_path = directory / "meta.json", directory / "images.npy"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(array_path, mmap_mode="r", allow_pickle=False)
        if meta.get("key") != key or list(images.shape) != meta["shape"] or images.dtype != np.uint8:
            raise ValueError("shape, type or key differ from meta.json")
        if _digest(images) != meta["sha256"]:
            raise ValueError("sha256 mismatch")
        indices = np.asarray(meta["indices"], dtype=np.int64) if "indices" in meta else None
        if indices is None or len(indices) != len(images) or meta.get("mode") not in MODES:
            raise ValueError("indices or mode missing")
    except Exception as exc:  # any unreadable entry is treated the same way: rebuild it
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"decoded image cache {directory} is invalid ({reason}); rebuilding", stacklevel=3)
        return None
    return Decoded(indices, images, meta["mode"], array_path)


def _store(directory: Path, key: str, images: np.ndarray, mode: str, indices: np.ndarray) -> Path:
    from attn_zoo.paths import atomic_output, make_dir, write_text

    make_dir(directory)
    with contextlib.suppress(OSError):
        (directory / "meta.json").unlink()  # the entry is invalid until its new meta is written, last
    with atomic_output(directory / "images.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, images, allow_pickle=False)
    meta = {
        "key": key,
        "version": CACHE_VERSION,
        "shape": list(images.shape),
        "mode": mode,
        "sha256": _digest(images),
        "indices": [int(i) for i in indices],
    }
    write_text(directory / "meta.json", json.dumps(meta))
    return directory / "images.npy"


def decode_split(
    dataset: Dataset,
    indices: Sequence[int] | np.ndarray,
    head: Callable[[Image.Image], Image.Image] | None,
    identity: Mapping[str, Any],
    *,
    root: str | os.PathLike[str] | None = None,
) -> Decoded:
    """The items ``indices`` of ``dataset`` decoded and put through ``head`` (deterministic PIL steps, e.g.
    resize; None: none), as one uint8 array. ``identity``: what the dataset is (source, root, options, split),
    part of the key. File-backed datasets go through the disk cache under ``root`` (default: the cache
    directory); others are decoded into memory. Raises :class:`NotCacheable` when the images cannot be one array.
    """
    from attn_zoo.paths import OutputError, cache_dir

    indices = np.unique(np.asarray(indices, dtype=np.int64))
    files = source_files(dataset)
    if files is None:
        images, mode = _decode(dataset, indices, head)
        return Decoded(indices, images, mode)
    parts = {
        "version": CACHE_VERSION,
        "identity": {k: identity[k] for k in sorted(identity)},
        "files": [str(files), _files_fingerprint(files)],
        "indices": hashlib.sha256(indices.tobytes()).hexdigest(),
        "head": repr(head),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    directory = Path(root if root is not None else cache_dir()) / "decoded" / key
    found = _load(directory, key)
    if found is not None:
        return found
    images, mode = _decode(dataset, indices, head)
    try:
        path = _store(directory, key, images, mode, indices)
    except OutputError as exc:  # the cache is an optimisation: without a place to write it, keep it in memory
        warnings.warn(f"decoded image cache not written ({exc}); keeping it in memory", stacklevel=2)
        return Decoded(indices, images, mode)
    return Decoded(indices, np.load(path, mmap_mode="r", allow_pickle=False), mode, path)
