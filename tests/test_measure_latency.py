"""Latency: the stopping rule (CI target, time cap, max repeats), the summary statistics, the CUDA path.

No timing assertions: the stopping rule is driven by scripted call durations.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import requires_cuda

import attn_zoo.measure.latency as latency
from attn_zoo.measure.latency import LATENCY_KEYS, bootstrap_median_ci, measure_latency, summarize


def scripted(monkeypatch, durations):
    """Make every timed call 'take' the next of ``durations`` (ms); returns the call counter."""
    source = iter(durations)
    calls = {"n": 0}

    def timer(device):
        def timed(fn):
            fn()
            calls["n"] += 1
            return next(source)

        return timed

    monkeypatch.setattr(latency, "_cpu_timer", timer)
    return calls


def test_fixed_repeats_gives_every_key_and_that_many_calls():
    calls = []
    result = measure_latency(lambda: calls.append(1), warmup=2, repeats=7)
    assert set(result) == set(LATENCY_KEYS)
    assert result["repeats"] == 7 and result["warmup"] == 2 and len(calls) == 9
    assert all(result[k] >= 0 for k in ("median_ms", "iqr_ms", "p95_ms", "min_ms"))
    assert result["min_ms"] <= result["median_ms"] <= result["p95_ms"]


def test_stable_times_stop_at_min_repeats_converged(monkeypatch):
    calls = scripted(monkeypatch, itertools.repeat(10.0))
    result = measure_latency(lambda: None, warmup=0, min_repeats=5, max_repeats=100, target_ci=0.02)
    assert calls["n"] == 5 and result["repeats"] == 5 and result["converged"] == 1.0
    assert result["median_ms"] == 10.0 and result["ci_rel"] == 0.0


def test_noisy_times_run_to_max_repeats_unconverged(monkeypatch):
    calls = scripted(monkeypatch, itertools.cycle([1.0, 100.0]))
    result = measure_latency(lambda: None, warmup=0, min_repeats=5, max_repeats=40, time_cap_s=1e9)
    assert calls["n"] == 40 and result["repeats"] == 40 and result["converged"] == 0.0
    assert result["ci_rel"] > 0.02


def test_time_cap_stops_after_min_repeats(monkeypatch):
    calls = scripted(monkeypatch, itertools.cycle([1.0, 100.0]))
    result = measure_latency(lambda: None, warmup=0, min_repeats=6, max_repeats=1000, time_cap_s=1e-9)
    assert calls["n"] == 6 and result["converged"] == 0.0


def test_noise_that_settles_converges_between_min_and_max(monkeypatch):
    rng = np.random.default_rng(0)
    calls = scripted(monkeypatch, (10.0 + rng.normal(0, 0.5) for _ in range(10_000)))
    result = measure_latency(lambda: None, warmup=0, min_repeats=5, max_repeats=2000, target_ci=0.01, time_cap_s=1e9)
    assert result["converged"] == 1.0 and 5 < calls["n"] < 2000 and result["ci_rel"] <= 0.01


def test_summary_statistics_match_numpy():
    times = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 6.0, 7.0]
    s = summarize(times)
    p25, p75, p95 = np.percentile(times, [25, 75, 95])
    assert s["median_ms"] == 4.5 and s["min_ms"] == 1.0 and s["repeats"] == 8
    assert s["iqr_ms"] == pytest.approx(p75 - p25) and s["p95_ms"] == pytest.approx(p95)
    assert s["ci_low_ms"] <= s["median_ms"] <= s["ci_high_ms"]
    assert s["ci_rel"] == pytest.approx((s["ci_high_ms"] - s["ci_low_ms"]) / 2 / 4.5)


def test_bootstrap_interval_narrows_with_more_data():
    rng = np.random.default_rng(1)
    few, many = rng.normal(10, 1, 10), rng.normal(10, 1, 1000)
    lo_f, hi_f = bootstrap_median_ci(few)
    lo_m, hi_m = bootstrap_median_ci(many)
    assert lo_m <= np.median(many) <= hi_m
    assert hi_m - lo_m < (hi_f - lo_f) / 3


def test_bad_repeat_bounds_are_refused():
    with pytest.raises(ValueError, match="min_repeats <= max_repeats"):
        measure_latency(lambda: None, min_repeats=10, max_repeats=5)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure_latency(lambda: None, repeats=0)


@requires_cuda
def test_cuda_timing_uses_events():  # pragma: no cover - needs CUDA
    x = torch.randn(512, 512, device="cuda")
    result = measure_latency(lambda: x @ x, device="cuda", warmup=2, repeats=5)
    assert result["repeats"] == 5 and result["median_ms"] > 0


def test_repeatability_compares_runs_of_the_same_cell():
    import pandas as pd

    from attn_zoo.measure.latency import repeatability

    def row(label, median, iqr, half):
        return {
            "label": label,
            "img_size": 224,
            "latency_fwd_median_ms": median,
            "latency_fwd_iqr_ms": iqr,
            "latency_fwd_ci_low_ms": median - half,
            "latency_fwd_ci_high_ms": median + half,
        }

    frame = pd.DataFrame([row("a", 10.0, 1.0, 0.2), row("a", 10.5, 0.8, 0.2), row("b", 10.0, 0.1, 0.1),
                          row("b", 11.0, 0.1, 0.1), row("c", 5.0, 1.0, 1.0)])  # fmt: skip
    table = repeatability(frame).set_index("label")
    assert list(table.index) == ["a", "b"]  # c ran once
    assert bool(table.loc["a", "within_iqr"]) and not bool(table.loc["a", "within_ci"])
    assert not bool(table.loc["b", "within_iqr"]) and table.loc["b", "max_diff_ms"] == 1.0
