"""Latency: warm up, synchronise the device, repeat until the median is known well enough, report its spread.

The stopping rule is the one the issue asks for: after ``min_repeats`` timed calls, keep going until the
95% bootstrap confidence interval of the median is narrower than ``target_ci`` (relative half-width, 2% by
default), or ``time_cap_s`` seconds of timed calls have passed, or ``max_repeats`` calls were made. The
result says which happened (``converged`` 1 or 0) and how many calls it took.

On a CUDA device each call is timed with CUDA events recorded on the current stream and read after the end
event synchronises (host timers would measure kernel launches, not kernels); on CPU with
``time.perf_counter``. Python's garbage collector is paused while timing (as :mod:`timeit` does).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import numpy as np
import torch

#: keys of :func:`measure_latency`'s result (milliseconds unless said otherwise)
LATENCY_KEYS = (
    "median_ms",  # median of the timed calls
    "iqr_ms",  # interquartile range (p75 - p25)
    "p95_ms",  # 95th percentile
    "min_ms",
    "mean_ms",
    "std_ms",
    "ci_low_ms",  # 95% bootstrap confidence interval of the median
    "ci_high_ms",
    "ci_rel",  # its half-width relative to the median (0.02 = +-2%)
    "repeats",  # timed calls made
    "converged",  # 1.0 when ci_rel <= target_ci was reached, else 0.0 (time cap or max_repeats hit first)
    "warmup",  # untimed calls made first
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bootstrap_median_ci(
    times: np.ndarray, *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median of ``times``."""
    times = np.asarray(times, dtype=float)
    if len(times) < 2:
        return float(times[0]), float(times[0])
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(times, size=(resamples, len(times)), replace=True), axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def measure_latency(
    fn: Callable[[], object],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int | None = None,
    min_repeats: int = 5,
    max_repeats: int = 200,
    time_cap_s: float = 10.0,
    target_ci: float = 0.02,
    keep_times: bool = False,
) -> dict[str, float]:
    """Time ``fn()`` on ``device``; returns the :data:`LATENCY_KEYS` (milliseconds), and with ``keep_times``
    also ``times_ms``: every timed call, in order (so that reports can pool repeated measurements).

    ``repeats`` fixes the number of timed calls (no early stop, no time cap). Otherwise calls are made until
    the median's 95% bootstrap CI half-width is within ``target_ci`` of the median (checked from
    ``min_repeats`` on), ``time_cap_s`` seconds of timed calls have passed, or ``max_repeats`` is reached.
    ``min_repeats`` calls are always made, so a slow model can run past the time cap.
    """
    device = torch.device(device)
    if repeats is not None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        min_repeats = max_repeats = repeats
        time_cap_s, target_ci = float("inf"), 0.0
    if not 1 <= min_repeats <= max_repeats:
        raise ValueError(f"need 1 <= min_repeats <= max_repeats, got {min_repeats}, {max_repeats}")
    for _ in range(warmup):
        fn()
    _sync(device)
    timer = _cuda_timer(device) if device.type == "cuda" else _cpu_timer(device)
    times: list[float] = []
    converged = False
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        next_check = min_repeats
        while len(times) < max_repeats:
            times.append(timer(fn))
            n = len(times)
            if n >= next_check:
                low, high = bootstrap_median_ci(np.array(times))
                if (high - low) / 2 <= target_ci * float(np.median(times)):
                    converged = True
                    break
                # bootstrap costs ~1 ms; for fast calls check every ~10% more repeats, not after each one
                next_check = n + max(1, n // 10)
            if n >= min_repeats and time.perf_counter() - start >= time_cap_s:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    result = summarize(times)
    result["converged"] = 1.0 if converged else 0.0
    result["warmup"] = float(warmup)
    if keep_times:
        result["times_ms"] = [float(t) for t in times]  # type: ignore[assignment]
    return result


def _cpu_timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return timed


def _cuda_timer(device: torch.device) -> Callable[[Callable[[], object]], float]:  # pragma: no cover - needs CUDA
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(fn: Callable[[], object]) -> float:
        with torch.cuda.device(device):
            begin.record()
            fn()
            end.record()
            end.synchronize()
            return float(begin.elapsed_time(end))

    return timed


def summarize(times_ms: list[float]) -> dict[str, float]:
    """Median, IQR, p95, min, mean, std and the median's bootstrap CI of a list of times (ms)."""
    if not times_ms:
        raise ValueError("no times to summarize")
    times = np.asarray(times_ms, dtype=float)
    median = float(np.median(times))
    p25, p75, p95 = np.percentile(times, [25, 75, 95])
    low, high = bootstrap_median_ci(times)
    return {
        "median_ms": median,
        "iqr_ms": float(p75 - p25),
        "p95_ms": float(p95),
        "min_ms": float(times.min()),
        "mean_ms": float(times.mean()),
        "std_ms": float(times.std(ddof=1)) if len(times) > 1 else 0.0,
        "ci_low_ms": low,
        "ci_high_ms": high,
        "ci_rel": (high - low) / 2 / median if median > 0 else 0.0,
        "repeats": float(len(times)),
    }


def repeatability(frame, mode: str = "fwd", by: tuple[str, ...] = ("label", "img_size", "device")):
    """Do repeated runs of the same cell agree within their reported spread?

    ``frame`` is a store's frame (``Store.frame()``) holding several rows of the same configuration (e.g.
    ``attn-zoo bench`` run twice). Per group of ``by``: the runs' medians, the largest difference between
    two of them, the largest reported IQR and CI half-width, and ``within_iqr`` / ``within_ci``: whether
    every pair of medians differs by less than the larger of the two rows' IQR (resp. the sum of their CI
    half-widths, i.e. the intervals overlap).
    """
    import pandas as pd

    prefix = f"latency_{mode}_"
    needed = [f"{prefix}{k}" for k in ("median_ms", "iqr_ms", "ci_low_ms", "ci_high_ms")]
    by = [c for c in by if c in frame.columns]
    records = []
    for keys, group in frame.dropna(subset=needed).groupby(by, sort=True):
        if len(group) < 2:
            continue
        med = group[needed[0]].to_numpy()
        iqr = group[needed[1]].to_numpy()
        half = ((group[needed[3]] - group[needed[2]]) / 2).to_numpy()
        pairs = [(i, j) for i in range(len(med)) for j in range(i + 1, len(med))]
        records.append(
            {
                **dict(zip(by, keys if isinstance(keys, tuple) else (keys,))),
                "runs": len(group),
                "medians_ms": ", ".join(f"{m:.2f}" for m in med),
                "max_diff_ms": max(abs(med[i] - med[j]) for i, j in pairs),
                "max_iqr_ms": float(iqr.max()),
                "max_ci_half_ms": float(half.max()),
                "within_iqr": all(abs(med[i] - med[j]) <= max(iqr[i], iqr[j]) for i, j in pairs),
                "within_ci": all(abs(med[i] - med[j]) <= half[i] + half[j] for i, j in pairs),
            }
        )
    return pd.DataFrame.from_records(records)
