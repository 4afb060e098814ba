"""Decoded-once images (issue 19): the cached path serves bit-identical batches to the per-sample path, for a
CIFAR-like JPEG tar made here, for Pathfinder and (when it is present) for the shared CIFAR-10 JPEG copy;
the disk cache's key follows the source; a partial or corrupt entry is rebuilt."""

from __future__ import annotations

import os
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attn_zoo.data.augment import SplitTransform
from attn_zoo.data.cache import Decoded
from attn_zoo.data.config import AUGMENTATIONS, DataConfig
from attn_zoo.data.loaders import CACHED_AUGMENTATIONS, Data, create_data
from attn_zoo.data.sources import CIFAR10_CLASSES
from attn_zoo.paths import allow_writes, restore_roots

pytestmark = pytest.mark.usefixtures("one_thread")


def _jpeg_tars(root: Path, per_class: tuple[int, int] = (5, 3), seed: int = 0) -> Path:
    """A CIFAR-10-like copy: train.tar / test.tar, a folder of 32 x 32 RGB JPEGs per CIFAR-10 class."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "test"), per_class, strict=True):
        folder = root / f"_{split}"
        for name in CIFAR10_CLASSES:
            (folder / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / name / f"{i:04d}.jpg", quality=75)
        with tarfile.open(root / f"{split}.tar", "w") as tf:
            tf.add(folder, arcname=".")
    return root


def _data(config: dict, cached: bool, img_size: int = 32, seed: int = 3) -> Data:
    return create_data(DataConfig.from_dict(config), img_size=img_size, batch_size=8, seed=seed, cached=cached)


def _batches(data: Data, epochs: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every training batch of ``epochs`` epochs (as the recipe sets them), then the test and val batches."""
    loader = data.train_loader()
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        data.train_set.set_epoch(epoch)
        out += [(x.clone(), y.clone()) for x, y in loader]
    out += list(data.eval_loader("test"))
    if data.val_set is not None:
        out += list(data.eval_loader("val"))
    return out


def _assert_identical(a: list, b: list) -> None:
    assert len(a) == len(b) and a
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.dtype == xb.dtype and xa.shape == xb.shape
        assert torch.equal(xa, xb), f"max difference {(xa - xb).abs().max().item()}"
        assert torch.equal(ya, yb)


@pytest.fixture
def jpeg_root(tmp_path) -> Path:
    return _jpeg_tars(tmp_path / "cifar_like")


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_jpeg_cached_batches_equal_uncached(jpeg_root, augment):
    config = {"source": "cifar10_jpeg", "root": str(jpeg_root), "augment": augment, "val_size": 10}
    plain, cached = _data(config, cached=False), _data(config, cached=True)
    assert plain.train_set.decoded is None
    assert isinstance(cached.train_set.decoded, Decoded) and cached.train_set.decoded.path is not None
    # the suites' pipelines run on whole batches; timm's random-resized crop and jitter run per image
    assert (cached.train_set.split.batch is not None) == (augment != "timm")
    assert cached.test_set.split.batch is not None
    _assert_identical(_batches(plain), _batches(cached))


@pytest.mark.parametrize("augment", ["light", "flip"])
def test_jpeg_cached_equal_uncached_with_a_resize(jpeg_root, augment):
    """At another size than the images', the resize is the transform's head: applied once, when decoding."""
    config = {"source": "cifar10_jpeg", "root": str(jpeg_root), "augment": augment}
    cached = _data(config, cached=True, img_size=24)
    assert cached.train_set.split.head is not None and cached.train_set.decoded.images.shape[1:3] == (24, 24)
    _assert_identical(_batches(_data(config, cached=False, img_size=24)), _batches(cached))
    # evaluation at another size than training's (as a resolution sweep asks) is cached too
    ours = list(cached.eval_loader("test", img_size=40))
    theirs = list(_data(config, cached=False, img_size=24).eval_loader("test", img_size=40))
    _assert_identical(theirs, ours)


@pytest.mark.parametrize(("augment", "channels"), [("flip", 1), ("light", 3), ("none", 1), ("timm", 3)])
def test_pathfinder_cached_batches_equal_uncached(augment, channels):
    config = {
        "source": "pathfinder",
        "augment": augment,
        "train_size": 24,
        "val_size": 8,
        "test_size": 12,
        "channels": channels,
    }
    plain, cached = _data(config, cached=False), _data(config, cached=True)
    assert cached.train_set.decoded is not None and cached.train_set.decoded.path is None  # generated: in memory
    _assert_identical(_batches(plain), _batches(cached))


def test_cells_use_the_cache_for_every_augmentation(jpeg_root):
    assert set(AUGMENTATIONS) == CACHED_AUGMENTATIONS
    data = create_data(
        DataConfig.from_dict({"source": "cifar10_jpeg", "root": str(jpeg_root)}), img_size=32, batch_size=8, seed=0
    )
    assert data.train_set.decoded is not None


def test_the_key_follows_the_source(tmp_path):
    root = _jpeg_tars(tmp_path / "a", seed=1)
    config = {"source": "cifar10_jpeg", "root": str(root), "augment": "light"}
    first = _data(config, cached=True)
    again = _data(config, cached=True)
    assert again.train_set.decoded.path == first.train_set.decoded.path  # found, not rebuilt
    before = first.test_set.decoded.path
    stat = (root / "test.tar").stat()
    _jpeg_tars(root, seed=2)  # the same names, other images
    os.utime(root / "test.tar", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = _data(config, cached=True)
    assert changed.test_set.decoded.path != before
    assert not np.array_equal(np.asarray(changed.test_set.decoded.images), np.asarray(first.test_set.decoded.images))
    _assert_identical(_batches(_data(config, cached=False)), _batches(changed))
    # another subset of the same split, or another head (image size), is another entry
    other = _data({**config, "train_size": 20}, cached=True)
    assert other.train_set.decoded.path != changed.train_set.decoded.path
    resized = _data(config, cached=True, img_size=24)
    assert resized.train_set.decoded.path != changed.train_set.decoded.path


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "no_meta", "bad_meta"])
def test_a_partial_or_corrupt_entry_is_rebuilt(jpeg_root, damage):
    config = {"source": "cifar10_jpeg", "root": str(jpeg_root), "augment": "light"}
    expected = _batches(_data(config, cached=False))
    path = _data(config, cached=True).train_set.decoded.path
    meta = path.parent / "meta.json"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "flip_byte":
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "no_meta":
        meta.unlink()  # a build that stopped before its meta was written
    else:
        meta.write_text("{not json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = _data(config, cached=True)
    if damage != "no_meta":
        assert any("rebuilding" in str(w.message) for w in caught)
    assert rebuilt.train_set.decoded.path == path and meta.is_file()
    _assert_identical(expected, _batches(rebuilt))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry verifies
        _data(config, cached=True)


def test_writes_pass_the_write_check(jpeg_root, tmp_path, monkeypatch):
    """Outside the command's write roots the cache is not written; the run goes on with the images in memory."""
    monkeypatch.setenv("ATTN_ZOO_CACHE", str(tmp_path / "cache"))
    config = {"source": "cifar10_jpeg", "root": str(jpeg_root), "augment": "flip"}
    with restore_roots():
        allow_writes(tmp_path / "elsewhere")
        with pytest.warns(UserWarning, match="decoded image cache not written"):
            data = _data(config, cached=True)
    assert data.train_set.decoded is not None and data.train_set.decoded.path is None
    assert not (tmp_path / "cache").exists()
    _assert_identical(_batches(_data(config, cached=False)), _batches(data))


def test_split_transform_cuts_head_and_tail():
    from attn_zoo.data.loaders import build_transform

    info = {"mean": (0.5,), "std": (0.25,), "in_chans": 1}
    light = SplitTransform(build_transform(DataConfig(augment="light"), info, 32, True))
    assert light.head is not None and light.batch is not None and light.batch.crop == (32, 32)
    assert light.batch.padding == 4 and light.batch.flip == 0.5
    timm = SplitTransform(build_transform(DataConfig(augment="timm"), info, 32, True))
    assert timm.head is None and timm.batch is None
    evaluation = SplitTransform(build_transform(DataConfig(), info, 32, False))
    assert evaluation.batch is not None and not evaluation.batch.random


def test_shared_cifar10_jpeg_cached_equals_uncached(cifar10_jpeg):
    """The real copy (skips when ../shared/data is absent): a seeded subset, the suites' light augmentation."""
    config = {"source": "cifar10_jpeg", "root": str(cifar10_jpeg), "train_size": 200, "test_size": 100}
    config["augment"] = "light"
    _assert_identical(_batches(_data(config, cached=False)), _batches(_data(config, cached=True)))
