"""Resolution scaling: fitted exponents of MACs, latency and memory against the number of tokens.

Per group (by default per ``label``: a mechanism or preset) and metric, a least-squares line
``log(metric) = a + b * log(tokens)`` over the stored rows; ``b`` is the exponent. Global attention
approaches 2 as the quadratic term dominates, window and neighbourhood attention stay near 1. ``tokens`` is
the number of tokens of the first stage (``(img_size / patch) ** 2``, written by ``measure_model``); any
fixed multiple of it gives the same exponent, so ``img_size ** 2`` is used when a store has no ``tokens``.

Command line: ``python -m attn_zoo.cli.scaling STORE.sqlite [--by label] [--json] [--csv OUT]``.

Columns of :func:`fit_exponents`' result (documented in docs/measurement.md):
    the ``by`` columns; ``metric``; ``exponent`` (b); ``exponent_ci95`` (half-width of its 95% t-interval,
    NaN with 2 points); ``intercept`` (a, natural log); ``r2``; ``n_points``; ``tokens_min``, ``tokens_max``;
    ``scaling``: ``linear`` when b is within max(0.1, ci95) of 1, else ``superlinear`` or ``sublinear``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.stats

DEFAULT_METRICS = (
    "macs",
    "attention_macs",
    "latency_fwd_median_ms",
    "latency_fwd_min_ms",  # robust to other load on the machine (noise only adds time)
    "latency_train_median_ms",
    "peak_mem_fwd_mb",
    "act_mem_fwd_mb",
    "peak_mem_train_mb",
)
COLUMNS = (
    "metric",
    "exponent",
    "exponent_ci95",
    "intercept",
    "r2",
    "n_points",
    "tokens_min",
    "tokens_max",
    "scaling",
)


def fit_power_law(tokens: Sequence[float], values: Sequence[float]) -> dict[str, float]:
    """Least squares of ``log(values)`` on ``log(tokens)``: exponent, its 95% CI half-width, intercept, r2."""
    raw = np.asarray(tokens, float)
    x, y = np.log(raw), np.log(np.asarray(values, float))
    n = len(x)
    if n < 2 or np.ptp(x) == 0:
        raise ValueError(f"need at least two different token counts to fit an exponent, got {n} point(s)")
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    ss_res, ss_tot = float(residuals @ residuals), float(((y - y.mean()) ** 2).sum())
    ci = math.nan
    if n > 2:
        se = math.sqrt(ss_res / (n - 2) / float(((x - x.mean()) ** 2).sum()))
        ci = float(scipy.stats.t.ppf(0.975, n - 2)) * se
    return {
        "exponent": float(slope),
        "exponent_ci95": ci,
        "intercept": float(intercept),
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        "n_points": n,
        "tokens_min": float(raw.min()),
        "tokens_max": float(raw.max()),
    }


def classify(exponent: float, ci95: float, tolerance: float = 0.1) -> str:
    margin = max(tolerance, 0.0 if math.isnan(ci95) else ci95)
    if abs(exponent - 1) <= margin:
        return "linear"
    return "superlinear" if exponent > 1 else "sublinear"


def fit_exponents(
    frame: pd.DataFrame, metrics: Sequence[str] | None = None, by: str | Sequence[str] = "label", x: str = "tokens"
) -> pd.DataFrame:
    """One row per group and metric: the exponent of ``metric ~ tokens ** exponent`` (see the module doc).

    Rows with a missing, zero or negative value are left out of that metric's fit; a group with fewer
    than two token counts for a metric gives no row for it.
    """
    by = [by] if isinstance(by, str) else list(by)
    frame = frame.copy()
    if x not in frame.columns:
        if "img_size" not in frame.columns:
            raise ValueError(f"the frame has neither {x!r} nor 'img_size' to scale against")
        frame[x] = frame["img_size"].astype(float) ** 2
    metrics = [m for m in (metrics or DEFAULT_METRICS) if m in frame.columns]
    records = []
    for keys, group in frame.groupby(by, sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for metric in metrics:
            rows = group[[x, metric]].apply(pd.to_numeric, errors="coerce").dropna()
            rows = rows[(rows[x] > 0) & (rows[metric] > 0)]
            if rows[x].nunique() < 2:
                continue
            fit = fit_power_law(rows[x], rows[metric])
            fit["scaling"] = classify(fit["exponent"], fit["exponent_ci95"])
            records.append({**dict(zip(by, keys)), "metric": metric, **fit})
    return pd.DataFrame.from_records(records, columns=[*by, *COLUMNS])


def exponent_table(fits: pd.DataFrame, by: str = "label") -> pd.DataFrame:
    """Wide view: one row per group, one ``exponent`` column per metric (``b ± ci``)."""

    def fmt(row: pd.Series) -> str:
        ci = row["exponent_ci95"]
        return f"{row['exponent']:.2f}" + ("" if math.isnan(ci) else f" ± {ci:.2f}")

    if fits.empty:
        return pd.DataFrame()
    cells = fits.assign(text=fits.apply(fmt, axis=1))
    return cells.pivot(index=by, columns="metric", values="text").reset_index()
