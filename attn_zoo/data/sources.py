"""Data sources by name. Each builds one split as a ``Dataset`` of ``(PIL image, label)`` with ``.targets``.

| source         | what                                                   | splits it has        |
|----------------|--------------------------------------------------------|----------------------|
| ``cifar10``    | torchvision's CIFAR-10 (python batches) from ``root``  | train, test          |
| ``cifar100``   | torchvision's CIFAR-100 from ``root``                  | train, test          |
| ``cifar10_jpeg`` | the CIFAR-10 JPEG copy: ``train.tar`` / ``test.tar`` | train, test          |
| ``fashion_mnist`` | idx files (torchvision's or Debian's layout)        | train, test          |
| ``imagefolder``| a directory or tar per split, one folder per class     | train, test          |
| ``pathfinder`` | generated long-range task (``attn_zoo.data.pathfinder``) | train, val, test  |
| ``synthetic``  | generated oriented bars in noise, for smoke tests      | train, val, test     |

Folders and tars are read with timm's readers (``timm.data.create_dataset``), torchvision's CIFAR classes
through timm's ``torch/`` names. A source without a ``val`` split gets its validation set carved out of
``train`` by :mod:`attn_zoo.data.loaders`; the reported number always comes from ``test``.
Transforms are applied by :mod:`attn_zoo.data.loaders`, never by the source (its ``transform`` stays None).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from attn_zoo.errors import AttnZooError, ConfigError
from attn_zoo.names import Registry

if TYPE_CHECKING:
    from attn_zoo.data.config import DataConfig

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# per-channel statistics of the training splits (CIFAR: the published values; Fashion-MNIST: computed over
# the 60,000 training images)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm has no CIFAR or Fashion-MNIST ones
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


class DataSourceError(AttnZooError, FileNotFoundError):
    """Data a source needs is missing or unreadable; the message says where it looked and what to set."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A registered data source.

    ``build(config, split) -> (dataset, info)``; ``info`` has ``num_classes``, ``in_chans``, ``mean``,
    ``std`` and ``classes``. ``options`` maps each allowed source option to its default.
    """

    name: str
    build: Callable[[DataConfig, str], tuple[Dataset, dict[str, Any]]]
    doc: str
    splits: tuple[str, ...] = ("train", "test")
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    check: Callable[[DataConfig], None] | None = None

    def validate(self, config: DataConfig) -> None:
        unknown = set(config.options) - set(self.options)
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "(none)"
            raise ConfigError(f"data source {self.name!r}: unknown option {sorted(unknown)[0]!r}; allowed: {allowed}")
        if self.check is not None:
            self.check(config)

    def option(self, config: DataConfig, key: str) -> Any:
        return config.options.get(key, self.options[key])


SOURCES: Registry[Source] = Registry("data source")


def register_source(
    name: str,
    doc: str,
    *,
    splits: tuple[str, ...] = ("train", "test"),
    options: Mapping[str, Any] | None = None,
    check: Callable[[DataConfig], None] | None = None,
):
    """Register ``build(config, split) -> (dataset, info)`` under ``name``."""

    def wrap(build):
        SOURCES.add(name, Source(name, build, doc, splits, dict(options or {}), check))
        return build

    return wrap


def targets_of(dataset: Dataset) -> list[int]:
    """Integer labels of every item, without decoding images (``.targets`` or timm's ``reader.targets``)."""
    targets = getattr(dataset, "targets", None)
    reader = getattr(dataset, "reader", None)
    if targets is None and reader is not None:  # timm's ImageDataset: the tar reader has targets, the folder
        targets = getattr(reader, "targets", None)  # reader (path, target) samples
        if targets is None and hasattr(reader, "samples"):
            targets = [sample[1] for sample in reader.samples]
    if targets is None:
        raise ConfigError(f"dataset {type(dataset).__name__} exposes no .targets; cannot make class-balanced subsets")
    return [int(t) for t in targets]


class ArrayDataset(Dataset):
    """In-memory uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` with labels, served as PIL images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        self.images, self.labels, self.transform = images, np.asarray(labels).astype(np.int64), transform
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])


def _info(num_classes: int, in_chans: int, mean, std, classes: Sequence[str]) -> dict[str, Any]:
    return {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "mean": tuple(mean),
        "std": tuple(std),
        "classes": list(classes),
    }


def _expand(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def _split_size(config: DataConfig, split: str, default: int) -> int:
    size = {"train": config.train_size, "val": config.val_size, "test": config.test_size}[split]
    return default if size is None else size


# -- generated --------------------------------------------------------------------------------------------


@register_source(
    "synthetic",
    "oriented bars in noise (4 classes, 1 channel); generated, for smoke tests",
    splits=("train", "val", "test"),
    options={"resolution": 32, "generator_seed": 0},
)
def _synthetic(config: DataConfig, split: str) -> tuple[Dataset, dict[str, Any]]:
    source = SOURCES["synthetic"]
    res, seed = int(source.option(config, "resolution")), int(source.option(config, "generator_seed"))
    n = _split_size(config, split, {"train": 2000, "val": 500, "test": 500}[split])
    rng = np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split]])
    labels = rng.integers(0, 4, size=n)
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32) / res
    images = rng.normal(0.3, 0.1, size=(n, res, res)).astype(np.float32)
    for i, label in enumerate(labels):
        offset = rng.uniform(0.2, 0.8)
        coord = {0: yy, 1: xx, 2: (xx + yy) / 2, 3: (xx - yy + 1) / 2}[int(label)]
        images[i] += 0.6 * (np.abs(coord - offset) < 0.08)
    images = (np.clip(images, 0, 1) * 255).astype(np.uint8)
    return ArrayDataset(images, labels), _info(4, 1, (0.5,), (0.25,), ("rows", "columns", "diagonal", "antidiagonal"))


def _check_pathfinder(config: DataConfig) -> None:
    source = SOURCES["pathfinder"]
    if source.option(config, "difficulty") not in ("easy", "medium", "hard"):
        raise ConfigError(
            f"data source 'pathfinder': difficulty {source.option(config, 'difficulty')!r} unknown; "
            "allowed: easy, medium, hard"
        )
    if source.option(config, "channels") not in (1, 3):
        raise ConfigError(
            f"data source 'pathfinder': channels must be 1 or 3, got {source.option(config, 'channels')!r}"
        )
    res = source.option(config, "resolution")
    if not isinstance(res, int) or isinstance(res, bool) or res < 8:
        raise ConfigError(f"data source 'pathfinder': resolution must be an integer >= 8, got {res!r}")


@register_source(
    "pathfinder",
    "Pathfinder (Long Range Arena): are two markers joined by one curved path among distractors? generated",
    splits=("train", "val", "test"),
    options={"resolution": 32, "difficulty": "easy", "generator_seed": 0, "channels": 1},
    check=_check_pathfinder,
)
def _pathfinder(config: DataConfig, split: str) -> tuple[Dataset, dict[str, Any]]:
    from attn_zoo.paths import cache_dir

    try:  # lazy: the generator is its own module and may be absent from a partial checkout
        from attn_zoo.data.pathfinder import PathfinderDataset
    except ImportError as exc:
        raise DataSourceError(
            f"data source 'pathfinder' needs the module attn_zoo.data.pathfinder, which is not importable here: {exc}"
        ) from None
    source = SOURCES["pathfinder"]
    size = {"train": config.train_size, "val": config.val_size, "test": config.test_size}[split]
    dataset = PathfinderDataset(
        split=split,
        n=size,
        resolution=int(source.option(config, "resolution")),
        difficulty=str(source.option(config, "difficulty")),
        seed=int(source.option(config, "generator_seed")),
        root=str(cache_dir() / "pathfinder"),  # generated .npz files are cached here (--cache-dir, $ATTN_ZOO_CACHE)
        channels=int(source.option(config, "channels")),
        read_roots=[_expand(config.root)] if config.root else [],  # a suite's root is only read
    )
    channels = int(source.option(config, "channels"))
    # ink is sparse (mostly black): normalise with measured statistics (the loaders use the train split's)
    mean, std = _gray_stats(dataset)
    return dataset, _info(2, channels, (mean,) * channels, (std,) * channels, ("disconnected", "connected"))


def _gray_stats(dataset: Any) -> tuple[float, float]:
    images = getattr(dataset, "images", None)
    if images is None:
        return 0.5, 0.5
    pixels = np.asarray(images, dtype=np.float64) / 255.0
    return round(float(pixels.mean()), 4), round(max(float(pixels.std()), 1e-3), 4)


# -- CIFAR ------------------------------------------------------------------------------------------------


def _cifar(name: str, config: DataConfig, split: str) -> Dataset:
    """From ``root`` (only read); with ``download = true`` and no readable copy there, torchvision downloads
    into the cache directory (``--cache-dir``, ``$ATTN_ZOO_CACHE``), never into a suite's root."""
    from timm.data import create_dataset

    from attn_zoo.paths import cache_dir, make_dir

    source = SOURCES[name]
    download = bool(source.option(config, "download"))
    if not config.root and not download:
        raise DataSourceError(
            f"data source {name!r} needs root: the directory holding torchvision's "
            f"{'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'} (or set download = true)"
        )
    root = _expand(config.root) if config.root else None
    cached = cache_dir() / name
    error = None
    for place in [p for p in (root, cached if download else None) if p is not None]:
        try:
            # timm's torch/ names wrap torchvision's CIFAR classes
            return create_dataset(f"torch/{name}", root=str(place), split=split, download=False)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            error = exc
    if download:
        return create_dataset(f"torch/{name}", root=str(make_dir(cached)), split=split, download=True)
    raise DataSourceError(
        f"data source {name!r}: no readable {name} batches under {root} ({error}); set root to the directory "
        "that holds them, or download = true (needs internet; downloads into the cache directory)"
    )


def _check_download(config: DataConfig) -> None:
    value = config.options.get("download", False)
    if not isinstance(value, bool):
        raise ConfigError(f"data option download must be true or false, got {value!r}")


@register_source(
    "cifar10", "CIFAR-10, torchvision's format under root", options={"download": False}, check=_check_download
)
def _cifar10(config: DataConfig, split: str) -> tuple[Dataset, dict[str, Any]]:
    return _cifar("cifar10", config, split), _info(10, 3, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES)


@register_source(
    "cifar100", "CIFAR-100, torchvision's format under root", options={"download": False}, check=_check_download
)
def _cifar100(config: DataConfig, split: str) -> tuple[Dataset, dict[str, Any]]:
    dataset = _cifar("cifar100", config, split)
    return dataset, _info(100, 3, CIFAR100_MEAN, CIFAR100_STD, dataset.classes)


def default_shared_data() -> list[Path]:
    """Where shared data sits: ``$ATTN_ZOO_SHARED_DATA``, then ``../shared/data`` beside the project's root
    (the checkout holding this package), then beside the working directory."""
    places = []
    if os.environ.get("ATTN_ZOO_SHARED_DATA"):
        places.append(Path(os.environ["ATTN_ZOO_SHARED_DATA"]))
    places.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    places.append(Path.cwd().parent / "shared" / "data")
    return places


def _find_root(name: str, config: DataConfig, candidates: Sequence[Path], marker: str) -> Path:
    tried = [_expand(config.root)] if config.root else list(dict.fromkeys(p.resolve() for p in candidates))
    for path in tried:
        if (path / marker).exists():
            return path
    where = ", ".join(str(p) for p in tried)
    hint = "set root to its directory" + ("" if config.root else " (or the ATTN_ZOO_SHARED_DATA variable)")
    raise DataSourceError(f"data source {name!r}: {marker} not found in {where}; {hint}")


@register_source("cifar10_jpeg", "the CIFAR-10 JPEG copy (train.tar, test.tar, ImageFolder inside), timm's tar reader")
def _cifar10_jpeg(config: DataConfig, split: str) -> tuple[Dataset, dict[str, Any]]:
    from timm.data import create_dataset

    root = _find_root("cifar10_jpeg", config, [p / "cifar10-jpeg" for p in default_shared_data()], "train.tar")
    path = root / f"{split}.tar"
    if not path.is_file():
        raise DataSourceError(f"data source 'cifar10_jpeg': {path} not found")
    dataset = create_dataset("", root=str(path))
    classes = sorted(dataset.reader.class_name_to_idx, key=dataset.reader.class_name_to_idx.get)
    if tuple(classes) != CIFAR10_CLASSES:
        raise DataSourceError(f"data source 'cifar10_jpeg': {path} has classes {classes}, expected {CIFAR10_CLASSES}")
    return dataset, _info(10, 3, CIFAR10_MEAN, CIFAR10_STD, classes)


# -- Fashion-MNIST (idx files) ----------------------------------------------------------------------------

# Not torchvision's read_sn3_pascalvincent_tensor (0.29): it opens plain files only (a .gz one, as a download
# keeps them, fails), and checks header and size with bare asserts (no message; none at all under -O).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format; ``.gz`` or plain) into an array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataSourceError(f"idx file {path}: cannot read ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or not 1 <= data[3] <= 4:
        raise DataSourceError(f"idx file {path}: bad header {data[:4]!r} (expected 0x00 0x00 <type> <ndim>)")
    ndim, dtype = data[3], np.dtype(_IDX_DTYPES[data[2]])
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset, expected = 4 + 4 * ndim, int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise DataSourceError(
            f"idx file {path}: header says shape {shape} ({expected} bytes), file holds {len(data) - offset} bytes "
            "(truncated or not an idx file)"
        )
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


@register_source(
    "fashion_mnist",
    f"Fashion-MNIST idx files under root (torchvision's FashionMNIST/raw or Debian's {DEBIAN_FASHION_MNIST})",
)
def _fashion_mnist(config: DataConfig, split: str) -> tuple[Dataset, dict[str, Any]]:
    roots = [_expand(config.root)] if config.root else [Path(DEBIAN_FASHION_MNIST)]
    prefix = "train" if split == "train" else "t10k"
    for root in roots:
        images_path = _idx_file(root, f"{prefix}-images-idx3-ubyte")
        labels_path = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
        if images_path and labels_path:
            break
    else:
        raise DataSourceError(
            f"data source 'fashion_mnist': {prefix}-images-idx3-ubyte[.gz] / {prefix}-labels-idx1-ubyte[.gz] not "
            f"found under {', '.join(map(str, roots))} (nor its FashionMNIST/raw); set root, or on Debian/Ubuntu "
            "`apt-get install dataset-fashion-mnist`"
        )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or images.dtype != np.uint8:
        raise DataSourceError(
            f"data source 'fashion_mnist': {images_path} {images.shape} {images.dtype} and {labels_path} "
            f"{labels.shape} do not form (N, H, W) uint8 images with N labels"
        )
    return ArrayDataset(images, labels), _info(10, 1, FASHION_MEAN, FASHION_STD, FASHION_MNIST_CLASSES)


# -- any ImageFolder (directory or tar) -------------------------------------------------------------------

_SPLIT_NAMES = {"train": ("train", "training"), "test": ("test", "val", "validation")}


def _check_imagefolder(config: DataConfig) -> None:
    source = SOURCES["imagefolder"]
    if source.option(config, "mode") not in ("RGB", "L"):
        raise ConfigError(
            f"data source 'imagefolder': mode must be 'RGB' or 'L', got {source.option(config, 'mode')!r}"
        )
    for key in ("mean", "std"):
        value = source.option(config, key)
        if value is not None and (not isinstance(value, (list, tuple)) or not all(v > 0 for v in value)):
            raise ConfigError(f"data source 'imagefolder': {key} must be a list of positive numbers, got {value!r}")


@register_source(
    "imagefolder",
    "one folder per class, in a directory or a .tar per split (root/train[.tar], root/test|val[.tar]); timm's readers",
    options={"train": None, "test": None, "mode": "RGB", "mean": None, "std": None},
    check=_check_imagefolder,
)
def _imagefolder(config: DataConfig, split: str) -> tuple[Dataset, dict[str, Any]]:
    from timm.data import create_dataset

    source = SOURCES["imagefolder"]
    explicit = source.option(config, split)
    if explicit:
        path = _expand(explicit)
    else:
        if not config.root:
            raise DataSourceError(f"data source 'imagefolder' needs root (or the option {split} = PATH)")
        root = _expand(config.root)
        names = [n + ext for n in _SPLIT_NAMES[split] for ext in ("", ".tar")]
        found = [root / n for n in names if (root / n).exists()]
        if not found:
            raise DataSourceError(
                f"data source 'imagefolder': no {split} split under {root} (looked for {', '.join(names)}); "
                f"set the option {split} = PATH"
            )
        path = found[0]
    if not path.exists():
        raise DataSourceError(f"data source 'imagefolder': {path} not found")
    mode = source.option(config, "mode")
    dataset = create_dataset("", root=str(path), input_img_mode=mode)
    mapping = dataset.reader.class_name_to_idx if hasattr(dataset.reader, "class_name_to_idx") else None
    mapping = mapping or getattr(dataset.reader, "class_to_idx", {})
    classes = sorted(mapping, key=mapping.get)
    chans = 3 if mode == "RGB" else 1
    mean = source.option(config, "mean") or (IMAGENET_MEAN if chans == 3 else (0.5,))
    std = source.option(config, "std") or (IMAGENET_STD if chans == 3 else (0.25,))
    if len(mean) != chans or len(std) != chans:
        raise ConfigError(f"data source 'imagefolder': mean and std need {chans} values for mode {mode!r}")
    return dataset, _info(len(classes), chans, mean, std, classes)
