"""Data sources by name, class-balanced subsets, split rules, transforms and seeded loaders."""

from __future__ import annotations

import collections
import gzip
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attn_zoo.data.config import DataConfig
from attn_zoo.data.loaders import EpochSampler, balanced_subset, create_data
from attn_zoo.data.sources import CIFAR10_CLASSES, DEBIAN_FASHION_MNIST, SOURCES, DataSourceError, read_idx
from attn_zoo.errors import ConfigError, UnknownNameError
from attn_zoo.train.recipe import seed_everything


def make(cfg: dict, seed: int = 0, img_size: int = 32, batch_size: int = 8):
    return create_data(DataConfig.from_dict(cfg), img_size=img_size, batch_size=batch_size, seed=seed)


def test_registered_sources():
    assert {"synthetic", "cifar10", "cifar100", "cifar10_jpeg", "fashion_mnist", "imagefolder", "pathfinder"} <= set(
        SOURCES
    )


def test_bad_config_messages():
    with pytest.raises(UnknownNameError, match=r"unknown data source 'mnist'; allowed: .*cifar10"):
        DataConfig.from_dict({"source": "mnist"})
    with pytest.raises(
        ConfigError, match="data source 'synthetic': unknown option 'difficulty'; allowed: generator_seed, resolution"
    ):
        DataConfig.from_dict({"source": "synthetic", "difficulty": "hard"})
    with pytest.raises(ConfigError, match="train_size must be a positive integer, got 0"):
        DataConfig.from_dict({"source": "synthetic", "train_size": 0})
    with pytest.raises(ConfigError, match='aug settings apply only with augment = "timm"'):
        DataConfig.from_dict({"source": "synthetic", "aug": {"re_prob": 0.25}})
    with pytest.raises(ConfigError, match="data aug: unknown key 'mixup'"):
        DataConfig.from_dict({"source": "synthetic", "augment": "timm", "aug": {"mixup": 0.2}})
    with pytest.raises(ConfigError, match="difficulty 'extreme' unknown; allowed: easy, medium, hard"):
        DataConfig.from_dict({"source": "pathfinder", "difficulty": "extreme"})


def test_balanced_subset_is_even_deterministic_and_seeded():
    targets = np.repeat(np.arange(5), [100, 100, 100, 100, 7])  # class 4 has too few
    a = balanced_subset(targets, 53, np.random.default_rng(1))
    assert len(a) == 53 == len(set(a.tolist()))
    counts = collections.Counter(targets[a].tolist())
    assert counts[4] == 7 and all(11 <= counts[c] <= 12 for c in range(4)), counts
    assert np.array_equal(a, balanced_subset(targets, 53, np.random.default_rng(1)))
    assert not np.array_equal(a, balanced_subset(targets, 53, np.random.default_rng(2)))
    with pytest.raises(ConfigError, match="asked for 600 items, the split has only 407"):
        balanced_subset(targets, 600, np.random.default_rng(0))


def test_synthetic_splits_sizes_and_info():
    data = make({"source": "synthetic", "train_size": 40, "val_size": 12, "test_size": 16})
    assert (data.info["train_size"], data.info["val_size"], data.info["test_size"]) == (40, 12, 16)
    assert data.info["num_classes"] == 4 and data.info["in_chans"] == 1
    images, labels = next(iter(data.train_loader()))
    assert images.shape == (8, 1, 32, 32) and labels.dtype == torch.int64


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.fixture
def tiny_fashion(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    raw = tmp_path / "FashionMNIST" / "raw"  # torchvision's layout; train gzipped, test plain
    for prefix, n, compress in (("train", 30, True), ("t10k", 20, False)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)
    return tmp_path


def test_fashion_mnist_reads_idx_files(tiny_fashion):
    images = read_idx(tiny_fashion / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz")
    assert images.shape == (30, 28, 28) and images.dtype == np.uint8
    data = make({"source": "fashion_mnist", "root": str(tiny_fashion), "train_size": 20}, img_size=32)
    assert (data.info["train_size"], data.info["test_size"], data.info["in_chans"]) == (20, 20, 1)
    assert collections.Counter(data.train_set.targets) == {c: 2 for c in range(10)}
    images, _ = next(iter(data.eval_loader("test")))
    assert images.shape[1:] == (1, 32, 32)  # 28x28 resized to the model's size


def test_truncated_idx_file_is_a_clear_error(tiny_fashion):
    path = tiny_fashion / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataSourceError, match=r"header says shape \(20, 28, 28\).*truncated"):
        read_idx(path)


def test_fashion_mnist_missing_files_say_where_to_get_them(tmp_path):
    with pytest.raises(DataSourceError, match=r"train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        make({"source": "fashion_mnist", "root": str(tmp_path)})


@pytest.mark.skipif(not Path(DEBIAN_FASHION_MNIST).is_dir(), reason=f"{DEBIAN_FASHION_MNIST} not installed")
def test_fashion_mnist_debian_package():
    train, info = SOURCES["fashion_mnist"].build(DataConfig(source="fashion_mnist"), "train")
    test, _ = SOURCES["fashion_mnist"].build(DataConfig(source="fashion_mnist"), "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert collections.Counter(test.targets) == {c: 1000 for c in range(10)}
    assert train.images.shape == (60000, 28, 28) and info["classes"][9] == "Ankle boot"


def _image_tree(root: Path, classes=("cat", "dog"), per_class=3) -> None:
    for c_idx, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (10, 12), (40 * c_idx, 7 * i, 99)).save(root / name / f"{i}.png")


def test_imagefolder_directory_and_tar(tmp_path):
    _image_tree(tmp_path / "dirs" / "train")
    _image_tree(tmp_path / "dirs" / "val", per_class=2)
    data = make({"source": "imagefolder", "root": str(tmp_path / "dirs")}, img_size=16, batch_size=2)
    assert data.info["classes"] == ["cat", "dog"] and data.info["num_classes"] == 2
    assert (data.info["train_size"], data.info["test_size"]) == (6, 4)
    assert sorted(data.test_set.targets) == [0, 0, 1, 1]
    images, _ = next(iter(data.train_loader()))
    assert images.shape == (2, 3, 16, 16)
    tars = tmp_path / "tars"
    tars.mkdir()
    for split in ("train", "val"):
        with tarfile.open(tars / f"{split}.tar", "w") as tf:
            tf.add(tmp_path / "dirs" / split, arcname=".")
    tar_data = make({"source": "imagefolder", "root": str(tars)}, img_size=16, batch_size=2)
    assert tar_data.info["classes"] == ["cat", "dog"] and sorted(tar_data.train_set.targets) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DataSourceError, match=r"no train split under .*looked for train, train.tar"):
        make({"source": "imagefolder", "root": str(tmp_path)})


def test_cifar10_without_data_says_what_to_set(tmp_path):
    with pytest.raises(DataSourceError, match=r"no readable cifar10 batches under .*download = true"):
        make({"source": "cifar10", "root": str(tmp_path)})
    with pytest.raises(DataSourceError, match="needs root"):
        make({"source": "cifar10"})


def test_cifar10_jpeg_splits_and_class_order(cifar10_jpeg):
    config = DataConfig(source="cifar10_jpeg", root=str(cifar10_jpeg))
    train, info = SOURCES["cifar10_jpeg"].build(config, "train")
    test, _ = SOURCES["cifar10_jpeg"].build(config, "test")
    assert (len(train), len(test)) == (50000, 10000)
    assert tuple(info["classes"]) == CIFAR10_CLASSES
    assert collections.Counter(test.reader.targets.tolist()) == {c: 1000 for c in range(10)}
    assert collections.Counter(train.reader.targets.tolist()) == {c: 5000 for c in range(10)}
    img, label = test[0]
    assert img.size == (32, 32) and img.mode == "RGB" and label == 0


def test_cifar10_jpeg_subsets_val_carved_from_train(cifar10_jpeg):
    cfg = {"source": "cifar10_jpeg", "root": str(cifar10_jpeg), "train_size": 200, "val_size": 100, "test_size": 50}
    a, c = make(cfg, seed=0), make(cfg, seed=1)
    assert collections.Counter(a.train_set.targets) == {k: 20 for k in range(10)}
    assert not set(a.train_set.indices) & set(a.val_set.indices)  # validation never overlaps training
    assert not np.array_equal(a.train_set.indices, c.train_set.indices)  # the run seed draws the subset
    assert np.array_equal(a.test_set.indices, c.test_set.indices)  # the test subset is the same for all runs


def test_generated_val_is_its_own_split():
    data = make({"source": "synthetic", "train_size": 30, "val_size": 10, "test_size": 10})
    assert data.val_set.base is not data.train_set.base and len(data.train_set) == 30


def test_pathfinder_source():
    data = make({"source": "pathfinder", "train_size": 16, "val_size": 8, "test_size": 8, "augment": "flip"})
    assert data.info["num_classes"] == 2 and data.info["in_chans"] == 1
    assert sorted(collections.Counter(data.train_set.targets).values()) == [8, 8]
    images, _ = next(iter(data.train_loader()))
    assert images.shape == (8, 1, 32, 32)


def test_pathfinder_missing_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "attn_zoo.data.pathfinder", None)  # import now raises ImportError
    with pytest.raises(DataSourceError, match=r"data source 'pathfinder' needs the module attn_zoo.data.pathfinder"):
        make({"source": "pathfinder", "train_size": 4, "test_size": 4})


def test_timm_augmentation_and_other_resolutions():
    cfg = {"source": "synthetic", "train_size": 16, "test_size": 8, "augment": "timm", "aug": {"re_prob": 0.25}}
    data = make(cfg)
    assert type(data.train_set.transform).__name__ == "Compose"
    names = [type(t).__name__ for t in data.train_set.transform.transforms]
    assert "RandomResizedCropAndInterpolation" in names and "RandomErasing" in names
    images, _ = next(iter(data.train_loader()))
    assert images.shape == (8, 1, 32, 32)
    for size in (24, 48):
        images, labels = next(iter(data.eval_loader("test", size)))
        assert images.shape == (8, 1, size, size)
        assert labels.tolist() == next(iter(data.eval_loader("test")))[1].tolist()


def test_loaders_are_seeded_and_resumable():
    cfg = {"source": "synthetic", "train_size": 64, "test_size": 8}
    first = []
    for seed in (3, 3, 4):
        seed_everything(seed)  # augmentation draws from the global generators, seeded by the recipe
        first.append(torch.cat([x.flatten() for x, _ in make(cfg, seed=seed).train_loader()]))
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])
    sampler = EpochSampler(20, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=8)
    assert list(sampler) == full[8:] and len(sampler) == 12
    sampler.set_epoch(3)
    assert list(sampler) != full and sorted(list(sampler)) == list(range(20))
