"""Small statistics without SciPy: Student-t critical values for 95% confidence intervals."""

from __future__ import annotations

import math

import numpy as np

# two-sided 95% critical values of Student's t for 1..30 degrees of freedom
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_critical(dof: int) -> float:
    """Two-sided 95% critical value of Student's t with ``dof`` degrees of freedom."""
    if dof < 1:
        return math.nan
    return _T95[dof - 1] if dof <= len(_T95) else 1.96 + 2.4 / dof  # close to the table beyond 30


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
