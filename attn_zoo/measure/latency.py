"""Latency: warm up, synchronise the device, repeat, report the median with its spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    fn: Callable[[], object],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, float]:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones (device synchronised around each).

    Returns milliseconds: ``median_ms``, ``iqr_ms`` (interquartile range), ``p95_ms``, ``min_ms``, and
    ``repeats``.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)


def summarize(times_ms: list[float]) -> dict[str, float]:
    times = sorted(times_ms)
    q = statistics.quantiles(times, n=20, method="inclusive") if len(times) > 1 else [times[0]] * 19
    quart = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return {
        "median_ms": statistics.median(times),
        "iqr_ms": quart[2] - quart[0],
        "p95_ms": q[18],
        "min_ms": times[0],
        "repeats": len(times),
    }
