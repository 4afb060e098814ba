"""How much of the machine a model uses: achieved GFLOP/s against this machine's measured matmul peak.

MACs predict latency only as far as every mechanism keeps the arithmetic units equally busy; window
partitions, gathers, masks and small matmuls do not. ``gflops_achieved = flops / latency`` and
``peak_fraction = gflops_achieved / matmul_peak_gflops`` put that gap into numbers.

The peak is measured, not looked up: the median GFLOP/s of a large square ``torch.mm`` (2048 on CPU, 8192 on
CUDA; ``2 n^3`` FLOPs each) in the dtype, on the device and with the thread count in use. It is cached in
memory and on disk (``$ATTN_ZOO_CACHE`` or ``~/.cache/attn_zoo/matmul_peak.json``) keyed by device name,
dtype, threads and torch version, because it costs a second or two and does not change between cells.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from attn_zoo.measure.environment import cpu_model
from attn_zoo.measure.latency import measure_latency
from attn_zoo.measure.steps import DTYPES

_MEMO: dict[str, float] = {}


def cache_path() -> Path:
    from attn_zoo.paths import cache_dir

    return cache_dir() / "matmul_peak.json"


def _key(device: torch.device, dtype: str, threads: int, n: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return f"{device.type}|{name}|{dtype}|threads={threads}|n={n}|torch={torch.__version__}"


def matmul_peak_gflops(
    device: str | torch.device = "cpu", dtype: str = "float32", *, n: int | None = None, use_cache: bool = True
) -> float:
    """GFLOP/s of a large square matmul here (median of timed calls), cached per device/dtype/threads."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    threads = torch.get_num_threads()
    key = _key(device, dtype, threads, n)
    if use_cache and key in _MEMO:
        return _MEMO[key]
    path = cache_path()
    if use_cache and path.is_file():
        try:
            stored = json.loads(path.read_text())
            if key in stored:
                _MEMO[key] = float(stored[key])
                return _MEMO[key]
        except (OSError, ValueError):
            pass  # a broken cache is re-measured and rewritten
    a = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
    b = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
    lat = measure_latency(lambda: torch.mm(a, b), device=device, warmup=2, min_repeats=5, max_repeats=30, time_cap_s=3)
    gflops = 2 * n**3 / (lat["median_ms"] * 1e-3) / 1e9
    _MEMO[key] = gflops
    if use_cache:
        try:
            from attn_zoo.paths import write_text

            stored = json.loads(path.read_text()) if path.is_file() else {}
            stored[key] = gflops
            write_text(path, json.dumps(stored, indent=1, sort_keys=True))
        except (OSError, ValueError):
            pass  # caching is an optimisation; a read-only home must not fail a measurement
    return gflops


def efficiency(flops_per_image: float, batch: int, latency_ms: float, peak_gflops: float) -> dict[str, float]:
    """``gflops_achieved`` and ``peak_fraction`` of a call that did ``flops_per_image * batch`` in ``latency_ms``."""
    achieved = flops_per_image * batch / (latency_ms * 1e-3) / 1e9
    return {"gflops_achieved": achieved, "matmul_peak_gflops": peak_gflops, "peak_fraction": achieved / peak_gflops}


# A training step costs forward + backward ~ 3 x the forward (the recipe's TRAIN_MACS_FACTOR): 6 x MACs FLOPs.
TRAIN_FLOPS_FACTOR = 3


def train_step_efficiency(flops_per_image: float, batch: int, step_ms: float, peak_gflops: float) -> dict[str, float]:
    """``train_gflops_achieved`` and ``train_peak_fraction`` of one training step of ``batch`` images in
    ``step_ms``: ``3 x forward flops x batch / step time`` (= 6 x MACs x batch / step time)."""
    achieved = TRAIN_FLOPS_FACTOR * flops_per_image * batch / (step_ms * 1e-3) / 1e9
    return {"train_gflops_achieved": achieved, "train_peak_fraction": achieved / peak_gflops}


def training_efficiency(
    metrics: dict[str, float], device: str | torch.device = "cpu", dtype: str = "float32"
) -> dict[str, float]:
    """For a trained cell's row: achieved GFLOP/s over the whole training (``2 x train_macs / train_time_s``, data
    loading included) and its fraction of the matmul peak here, at the current thread count. ``{}`` when the row
    has no ``train_macs`` / ``train_time_s``. Call it in the process that trained, after training."""
    macs, seconds = metrics.get("train_macs"), metrics.get("train_time_s")
    if not macs or not seconds:
        return {}
    achieved = 2 * macs / seconds / 1e9
    peak = matmul_peak_gflops(device, dtype)
    return {"train_gflops_achieved": achieved, "matmul_peak_gflops": peak, "train_peak_fraction": achieved / peak}
