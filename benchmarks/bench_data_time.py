"""Data loading time of one training epoch, per-sample (uncached) against decoded-once (cached), as the suites'
cells load it: CIFAR-10 JPEG (suites/cifar10_equal_macs.toml: 10,000 training images, augment "light") and
Pathfinder-32 easy (suites/pathfinder_equal_macs.toml: 10,000 images, augment "flip"), batch 64, 32 x 32.

For each source and round (the paths alternate within a round, so a machine's load falls on both):

- ``uncached``: ``create_data(cached=False)``, then one epoch of the training loader;
- ``cached, cold``: ``create_data(cached=True)`` with an empty cache directory (decodes and writes the cache);
- ``cached, warm``: ``create_data(cached=True)`` again (finds the cache), then one epoch.

"setup" is ``create_data`` (building the sources, subsets and, cached, the decode), "epoch" the loop over the
training loader with nothing else in it (no model). Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_data_time.py [--rounds 2] [--sources cifar10_jpeg pathfinder]

CIFAR-10 needs the JPEG copy in ../shared/data/cifar10-jpeg (or ``$ATTN_ZOO_SHARED_DATA``); a missing copy is
reported and skipped. The cache goes to a fresh temporary directory unless ``--cache-dir`` names one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from attn_zoo.data.config import DataConfig
from attn_zoo.data.loaders import create_data
from attn_zoo.data.sources import DataSourceError

CONFIGS = {
    "cifar10_jpeg": {"source": "cifar10_jpeg", "train_size": 10000, "augment": "light"},
    "pathfinder": {
        "source": "pathfinder",
        "difficulty": "easy",
        "resolution": 32,
        "train_size": 10000,
        "test_size": 4000,
        "augment": "flip",
    },
}


def _epoch(data) -> float:
    loader = data.train_loader()
    loader.sampler.set_epoch(0)
    data.train_set.set_epoch(0)
    start = time.perf_counter()
    for _images, _labels in loader:
        pass
    return time.perf_counter() - start


def _run(config: dict, cached: bool, seed: int) -> tuple[float, float]:
    start = time.perf_counter()
    data = create_data(DataConfig.from_dict(config), img_size=32, batch_size=64, seed=seed, cached=cached)
    setup = time.perf_counter() - start
    return setup, _epoch(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sources", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--cache-dir", default=None, help="cache directory (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="attn_zoo_bench_data_") as tmp:
            return _bench(args, Path(tmp))
    return _bench(args, Path(args.cache_dir))


def _bench(args: argparse.Namespace, base: Path) -> int:
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name in args.sources:
        config = CONFIGS[name]
        try:
            # Pathfinder's generated .npz files and the decoded cache both live in the cache directory; the
            # first call generates Pathfinder's split once, so no path below pays for that
            os.environ["ATTN_ZOO_CACHE"] = str(base / "warmup")
            create_data(DataConfig.from_dict(config), img_size=32, batch_size=64, seed=0, cached=False)
        except DataSourceError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        for r in range(args.rounds):
            os.environ["ATTN_ZOO_CACHE"] = str(base / "warmup")
            rows.setdefault((name, "uncached"), []).append(_run(config, False, seed=r))
            fresh = base / f"{name}-round{r}"
            if name == "pathfinder":  # the generated split is not what is timed: copy it into the fresh directory
                fresh.mkdir(parents=True, exist_ok=True)
                os.symlink(base / "warmup" / "pathfinder", fresh / "pathfinder")
            os.environ["ATTN_ZOO_CACHE"] = str(fresh)
            rows.setdefault((name, "cached, cold"), []).append(_run(config, True, seed=r))
            rows.setdefault((name, "cached, warm"), []).append(_run(config, True, seed=r))
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), Python {platform.python_version()}"
    )
    print(f"rounds: {args.rounds}; medians over rounds; seconds; batch 64, 32 x 32, one training epoch\n")
    print("| source | path | setup s | epoch s | images/s in the epoch | epoch speed-up |")
    print("|---|---|---|---|---|---|")
    for name in args.sources:
        if (name, "uncached") not in rows:
            continue
        n = CONFIGS[name]["train_size"] // 64 * 64
        base_epoch = statistics.median(e for _, e in rows[(name, "uncached")])
        for path in ("uncached", "cached, cold", "cached, warm"):
            setup = statistics.median(s for s, _ in rows[(name, path)])
            epoch = statistics.median(e for _, e in rows[(name, path)])
            print(f"| {name} | {path} | {setup:.2f} | {epoch:.2f} | {n / epoch:,.0f} | {base_epoch / epoch:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
