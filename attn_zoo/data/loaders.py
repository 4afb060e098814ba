"""Which data, how much of it, and the seeded loaders that serve it.

Splits. Every source has ``train`` and ``test``; the reported accuracy (``test_top1``) is measured once, at
the end, on ``test`` (for CIFAR and Fashion-MNIST the official test set), and nothing is tuned on it.
``val_size`` asks for a validation set: the source's own ``val`` split where it has one (generated
sources), otherwise a class-balanced slice of ``train`` that the training subset never overlaps.

Subsets. ``train_size`` / ``val_size`` / ``test_size`` take class-balanced subsets (``floor(n / K)`` per
class, the remainder spread over the classes in a seeded order). Training and validation subsets are drawn
with the run's seed (or ``subset_seed`` when set), so every mechanism at seed ``s`` sees the same images;
the test subset is drawn with a fixed seed, the same for every run.

Transforms are timm's: ``timm.data.create_transform`` for evaluation (resize + centre crop with
``crop_pct = 1``, normalise) and for ``augment = "timm"`` training (random-resized crop, flip, colour
jitter, RandAugment, random erasing as set in ``[data.aug]``); ``light`` is the usual small-image recipe
(pad-4 random crop and horizontal flip), ``flip`` a horizontal flip only, ``none`` no augmentation.

Paired runs: the training order, each image's augmentation and (in the recipe) each step's mixup draw come
from generators seeded by the run seed alone (:mod:`attn_zoo.data.seeds`), so every mechanism at seed
``s`` sees the same batches, after augmentation.

Loaders are torch ``DataLoader``s over an :class:`EpochSampler`, whose order depends only on
``(seed, epoch)``: the same seed gives the same batches, and a resumed run continues mid-epoch exactly
where it stopped. (timm's ``create_loader`` takes no sampler or generator, so it cannot give either.)
With ``num_workers > 0`` each worker's Python, NumPy and torch generators derive from the loader's seeded
generator.

Decoded once: by default (:data:`CACHED_AUGMENTATIONS`) each view's images are decoded one time
(:mod:`attn_zoo.data.cache`) and transformed a batch at a time (:mod:`attn_zoo.data.augment`), with the same
tensors, bit for bit, as decoding and transforming each item every epoch (``create_data(cached=False)``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from attn_zoo.data.augment import SplitTransform
from attn_zoo.data.cache import Decoded, NotCacheable, decode_split
from attn_zoo.data.config import AUGMENTATIONS, TIMM_AUG_KEYS, DataConfig
from attn_zoo.data.seeds import seeded_rng, stream_seed
from attn_zoo.data.sources import SOURCES, ArrayDataset, Source, register_source, targets_of
from attn_zoo.errors import ConfigError

__all__ = [
    "AUGMENTATIONS",
    "CACHED_AUGMENTATIONS",
    "SOURCES",
    "ArrayDataset",
    "Data",
    "DataConfig",
    "EpochSampler",
    "Source",
    "balanced_subset",
    "build_transform",
    "create_data",
    "create_loaders",
    "register_source",
]

TEST_SUBSET_SEED = 0
# the training augmentations whose runs use decoded-once images by default (cells call create_data with
# cached=None): every one, since tests/test_data_cache.py finds the cached batches bit-identical for each
CACHED_AUGMENTATIONS = frozenset(AUGMENTATIONS)


def balanced_subset(targets: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``targets``, as even over the classes as the counts allow, in sorted order.

    Each class contributes ``floor(n / K)`` items in a seeded random order; the remainder goes to classes in
    a seeded random order; a class with too few items gives all it has and the others fill in.
    """
    targets = np.asarray(targets)
    if n > len(targets):
        raise ConfigError(f"asked for {n} items, the split has only {len(targets)}")
    classes = np.unique(targets)
    pools = {c: rng.permutation(np.flatnonzero(targets == c)) for c in classes}
    quota = {c: 0 for c in classes}
    remaining = n
    order = list(rng.permutation(classes))
    while remaining:
        open_classes = [c for c in order if quota[c] < len(pools[c])]
        share = max(1, remaining // len(open_classes))
        for c in open_classes:
            take = min(share, len(pools[c]) - quota[c], remaining)
            quota[c] += take
            remaining -= take
            if not remaining:
                break
    return np.sort(np.concatenate([pools[c][: quota[c]] for c in classes]))


class TransformSubset(Dataset):
    """Items ``indices`` of ``base`` with ``transform`` applied here (the base keeps ``transform = None``,
    so a training and a validation view of one split can carry different transforms). ``targets``: the
    base's labels, all of them.

    ``draw_seed`` (training views): each item's transform runs under its own seeded generators, keyed by
    ``(draw_seed, epoch, base index)`` (:mod:`attn_zoo.data.seeds`), so the augmentation of an image
    depends only on the run seed and the epoch (:meth:`set_epoch`), not on what else drew random numbers.

    :meth:`cached` decodes the view's images once (:mod:`attn_zoo.data.cache`); then items are served from
    the decoded arrays, a batch at a time by :meth:`__getitems__` (the DataLoader's batched fetch), with the
    transform's random part done on the whole batch where :mod:`attn_zoo.data.augment` reproduces it, else per
    image as before. Either way the tensors are bit-identical to the uncached path's."""

    def __init__(
        self,
        base: Dataset,
        indices: Sequence[int],
        transform: Callable | None,
        targets: Sequence[int],
        draw_seed: int | None = None,
    ):
        self.base, self.indices, self.transform = base, np.asarray(indices, dtype=np.int64), transform
        self.base_targets = targets
        self.targets = [int(targets[i]) for i in self.indices]
        self.draw_seed, self.epoch = draw_seed, 0
        self.identity: Mapping[str, Any] | None = None  # set by cached(): what the base is, for the cache key
        self.decoded: Decoded | None = None
        self.split: SplitTransform | None = None
        if hasattr(base, "transform"):
            base.transform = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def cached(self, identity: Mapping[str, Any]) -> TransformSubset:
        """This view, its images decoded once (unchanged when they cannot be one uint8 array: mixed sizes or
        modes). ``identity``: the source, root, options and split of the base (part of the cache key)."""
        self.identity = dict(identity)
        if self.transform is None:
            return self
        split = SplitTransform(self.transform)
        try:
            self.decoded = decode_split(self.base, self.indices, split.head, self.identity)
        except NotCacheable:
            return self
        self.split = split
        return self

    def with_transform(self, transform: Callable | None) -> TransformSubset:
        view = TransformSubset(self.base, self.indices, transform, self.base_targets)
        return view.cached(self.identity) if self.identity is not None else view

    def subset(self, keep: Sequence[int] | np.ndarray) -> TransformSubset:
        """The items ``keep`` (positions in this view) with the same transform and decoded images."""
        view = TransformSubset(self.base, self.indices[np.asarray(keep)], self.transform, self.base_targets)
        view.identity, view.decoded, view.split = self.identity, self.decoded, self.split
        return view

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, int]]:
        if self.decoded is None or self.split is None:
            return [self[i] for i in indices]
        items = self.indices[np.asarray(indices, dtype=np.int64)]
        images = self.decoded.images[self.decoded.rows(items)]
        labels = [int(self.base_targets[i]) for i in items]
        batch = self.split.batch
        if batch is not None and (not batch.random or self.draw_seed is not None):
            seeds = [self._augment_seed(item) for item in items] if batch.random else None
            return list(zip(batch(images, seeds).unbind(0), labels, strict=True))
        tail = self.split.tail
        return [
            (self._transform(tail, Image.fromarray(np.asarray(array)), item), label)
            for array, item, label in zip(images, items, labels, strict=True)
        ]

    def __getitem__(self, index: int):
        if self.decoded is not None:
            return self.__getitems__([index])[0]
        item = int(self.indices[index])
        img, label = self.base[item]
        if self.transform is not None:
            img = self._transform(self.transform, img, item)
        return img, int(label)

    def _augment_seed(self, item: int) -> int:
        """The seed of base item ``item``'s augmentation in this epoch (the paired key: run seed, epoch, item)."""
        return stream_seed(self.draw_seed, "augment", self.epoch, int(item))

    def _transform(self, transform: Callable, img: Any, item: int) -> Any:
        """``transform(img)``; in a training view under the item's own seeded generators (:meth:`_augment_seed`)."""
        if self.draw_seed is None:
            return transform(img)
        with seeded_rng(self._augment_seed(item)):
            return transform(img)


class EpochSampler(Sampler[int]):
    """Shuffled order that depends only on ``(seed, epoch)``; ``start`` skips the first items of the epoch."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        digest = hashlib.sha256(f"attn_zoo-sampler:{self.seed}:{self.epoch}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :].tolist())

    def __len__(self) -> int:
        return self.size - self.start


def _seed_worker(worker_id: int) -> None:
    # torch seeds `random` and itself in each worker from the loader's generator; NumPy (timm's Mixup and
    # some transforms use it) is seeded here from the same number
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_transform(
    config: DataConfig, info: Mapping[str, Any], img_size: int, training: bool
) -> Callable[[Any], torch.Tensor]:
    """The transform for a split: timm's eval transform, or the configured training augmentation."""
    from timm.data import create_transform

    mean, std = tuple(info["mean"]), tuple(info["std"])
    size = (info["in_chans"], img_size, img_size)
    if not training:
        return create_transform(size, is_training=False, crop_pct=1.0, mean=mean, std=std)
    if config.augment == "timm":
        kwargs = {**TIMM_AUG_KEYS, **dict(config.aug)}
        for key in ("scale", "ratio"):
            kwargs[key] = tuple(kwargs[key]) if kwargs[key] is not None else None
        if info["in_chans"] == 1:
            kwargs["color_jitter"] = 0.0  # colour jitter on a grey image would add channels
        return create_transform(size, is_training=True, mean=mean, std=std, **kwargs)
    from torchvision import transforms as T

    steps: list[Any] = [T.Resize((img_size, img_size))]
    if config.augment == "light":
        steps += [T.RandomCrop(img_size, padding=max(1, img_size // 8)), T.RandomHorizontalFlip()]
    elif config.augment == "flip":
        steps += [T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


@dataclasses.dataclass
class Data:
    """The datasets of one run and their loaders. ``info``: num_classes, in_chans, mean, std, classes, sizes."""

    config: DataConfig
    info: dict[str, Any]
    train_set: TransformSubset
    val_set: TransformSubset | None
    test_set: TransformSubset
    seed: int
    batch_size: int
    eval_batch_size: int
    img_size: int

    def train_loader(self) -> DataLoader:
        sampler = EpochSampler(len(self.train_set), self.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.config.num_workers,
            worker_init_fn=_seed_worker if self.config.num_workers else None,
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=False,
        )

    def eval_loader(self, split: str = "test", img_size: int | None = None, size: int | None = None) -> DataLoader:
        """Loader over ``val`` or ``test`` at ``img_size`` (default: the training size), in a fixed order;
        ``size`` takes a class-balanced slice of that split, the same for every run."""
        base = {"val": self.val_set, "test": self.test_set}.get(split)
        if base is None:
            raise ConfigError(f"no {split!r} split in this run (set data val_size for a validation set)")
        if img_size is not None and img_size != self.img_size:
            base = base.with_transform(build_transform(self.config, self.info, img_size, training=False))
        if size is not None and size < len(base):
            keep = balanced_subset(base.targets, size, np.random.default_rng([TEST_SUBSET_SEED, 3]))
            base = base.subset(keep)
        return DataLoader(base, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.config.num_workers)


def create_data(
    config: DataConfig,
    *,
    img_size: int,
    batch_size: int,
    seed: int,
    eval_batch_size: int | None = None,
    cached: bool | None = None,
) -> Data:
    """Build the splits of ``config`` for a run with ``seed`` (see the module docstring for the rules).

    ``cached``: serve the images decoded once (:meth:`TransformSubset.cached`; the batches are bit-identical
    to the per-sample path's); None: :data:`CACHED_AUGMENTATIONS` decides by the training augmentation."""
    config.validate()
    if cached is None:
        cached = config.augment in CACHED_AUGMENTATIONS
    source = SOURCES[config.source]
    train_base, info = source.build(config, "train")
    test_base, _ = source.build(config, "test")
    train_targets, test_targets = targets_of(train_base), targets_of(test_base)
    subset_seed = seed if config.subset_seed is None else config.subset_seed
    rng = np.random.default_rng([subset_seed, 1])
    val_set = None
    train_pool = np.arange(len(train_targets))
    if config.val_size:
        if "val" in source.splits:
            val_base, _ = source.build(config, "val")
            val_targets = targets_of(val_base)
            val_idx = _subset(val_targets, config.val_size, rng, f"{config.source} val", native=True)
            val_set = TransformSubset(val_base, val_idx, build_transform(config, info, img_size, False), val_targets)
        else:
            if config.val_size >= len(train_targets):
                raise ConfigError(
                    f"data val_size {config.val_size} leaves nothing to train on: the {config.source} train split "
                    f"has {len(train_targets)} images"
                )
            val_idx = balanced_subset(train_targets, config.val_size, rng)
            train_pool = np.setdiff1d(train_pool, val_idx)
            val_set = TransformSubset(
                train_base, val_idx, build_transform(config, info, img_size, False), train_targets
            )
    pool_targets = [train_targets[i] for i in train_pool]
    train_idx = train_pool[_subset(pool_targets, config.train_size, rng, f"{config.source} train")]
    test_idx = _subset(test_targets, config.test_size, np.random.default_rng([TEST_SUBSET_SEED, 2]), "test")
    train_set = TransformSubset(
        train_base, train_idx, build_transform(config, info, img_size, True), train_targets, draw_seed=seed
    )
    test_set = TransformSubset(test_base, test_idx, build_transform(config, info, img_size, False), test_targets)
    if cached:
        identity = {"source": config.source, "root": config.root, "options": dict(config.options)}
        train_set.cached({**identity, "split": "train"})
        test_set.cached({**identity, "split": "test"})
        if val_set is not None:
            val_set.cached({**identity, "split": "val" if "val" in source.splits else "train"})
    info = {
        **info,
        "train_size": len(train_set),
        "val_size": len(val_set) if val_set is not None else 0,
        "test_size": len(test_set),
    }
    return Data(
        config,
        info,
        train_set,
        val_set,
        test_set,
        seed,
        batch_size,
        eval_batch_size or 2 * batch_size,
        img_size,
    )


def _subset(targets: Sequence[int], n: int | None, rng: np.random.Generator, what: str, native: bool = False):
    if n is None or (native and n == len(targets)):
        return np.arange(len(targets))
    if n > len(targets):
        raise ConfigError(f"data: asked for {n} images from the {what} split, which has {len(targets)}")
    return balanced_subset(targets, n, rng)


def create_loaders(
    config: DataConfig,
    *,
    img_size: int,
    batch_size: int,
    seed: int,
    eval_batch_size: int | None = None,
    cached: bool | None = None,
) -> tuple[DataLoader, DataLoader, dict[str, Any]]:
    """Seeded train and test loaders plus ``info`` (a shortcut over :func:`create_data`)."""
    data = create_data(
        config, img_size=img_size, batch_size=batch_size, seed=seed, eval_batch_size=eval_batch_size, cached=cached
    )
    return data.train_loader(), data.eval_loader("test"), data.info
