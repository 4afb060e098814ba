"""Small statistics: means with 95% Student-t confidence intervals (quantiles from SciPy)."""

from __future__ import annotations

import math

import numpy as np
import scipy.stats


def t_critical(dof: int, level: float = 0.95) -> float:
    """Two-sided critical value of Student's t with ``dof`` degrees of freedom (NaN below 1)."""
    if dof < 1:
        return math.nan
    return float(scipy.stats.t.ppf(0.5 + level / 2, dof))


def mean_ci(values) -> tuple[float, float, float, int]:
    """``(mean, std, half-width of the 95% t-interval, n)``; std and half-width are 0 for one value."""
    arr = np.asarray(list(values), dtype=float)
    arr = arr[~np.isnan(arr)]
    n = len(arr)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    if n == 1:
        return float(arr[0]), 0.0, 0.0, 1
    std = float(arr.std(ddof=1))
    return float(arr.mean()), std, float(t_critical(n - 1) * std / math.sqrt(n)), n
