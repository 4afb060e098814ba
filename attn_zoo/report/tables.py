"""Tables from stored rows: one row per configuration (seeds aggregated with mean, std and 95% CI).

Speed is a property of the configuration, not of the seed: latency (and the throughput derived from it) is
never averaged over seeds with a Student-t interval. The timed calls of every seed of a configuration are
pooled as repeated measurements, and the table gives their median with the 95% order-statistic interval of
that median (:func:`pooled_latency`). A configuration whose timing did not reach its CI target in some seed
is marked with :data:`NOT_CONVERGED`. Rows computed by different code (``code_fp``) are never aggregated
together: a store that mixes code versions gets one row per configuration and version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from attn_zoo.report.stats import mean_ci
from attn_zoo.train.spec import SPEC_COLUMNS

HARNESS = "the harness"  # the part name of the harness fingerprint (grid.provenance.changed_parts uses it too)

# (metric column, header, scale, format)
DEFAULT_COLUMNS = (
    ("params", "params (M)", 1e-6, "{:.3f}"),
    ("macs", "MACs (M)", 1e-6, "{:.2f}"),
    ("attention_macs", "attn MACs (M)", 1e-6, "{:.2f}"),
    ("budget_error", "budget err", 100, "{:+.1f}%"),
    ("latency_median_ms", "latency (ms)", 1, "{:.2f}"),
    ("throughput_img_s", "img/s", 1, "{:.1f}"),
    ("peak_memory_mb", "peak mem (MB)", 1, "{:.1f}"),
    ("test_top1", "top-1 (%)", 1, "{:.2f}"),
    ("val_top1", "val top-1 (%)", 1, "{:.2f}"),
)
# the short per-seed listing (attn-zoo results, the HTML page's cell table), before each's own last column
CELL_COLUMNS = ("label", "variant", "seed", "status", "params", "macs", "latency_median_ms", "test_top1", "val_top1")
# columns of Store.frame() that describe a cell rather than measure it
IDENTITY_COLUMNS = (
    "cell_id",
    "config_id",
    "suite",
    "label",
    "mechanism",
    "variant",
    "seed",
    "status",
    "reason",
    "attempts",
    *SPEC_COLUMNS,
    "backends",
    "device",
    "code_fp",
    "code",
    "commit",
)
NOT_CONVERGED = "†"
NOT_CONVERGED_NOTE = (
    f"{NOT_CONVERGED} latency did not converge: the time cap or max_repeats stopped the timing before the "
    "median's interval reached its target"
)
# latency metric -> (the sample list of its timed calls, its per-row converged flag, its per-row CI columns)
POOLED = {
    "latency_median_ms": ("latency_fwd_times_ms", "latency_fwd_converged", "latency_fwd_ci_low_ms"),
    **{
        f"latency_{m}_median_ms": (f"latency_{m}_times_ms", f"latency_{m}_converged", f"latency_{m}_ci_low_ms")
        for m in ("fwd", "fwdbwd", "train")
    },
}
# throughput metric -> the latency it is derived from (images per second = k / median, k = 1e3 * batch)
DERIVED = {"throughput_img_s": "latency_median_ms", "throughput_train_img_s": "latency_train_median_ms"}


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric metric columns of a store frame (not identity, knob, factor or artifact columns)."""
    out = []
    for col in frame.columns:
        if col in IDENTITY_COLUMNS or col.split(".")[0] in ("knob", "factor", "artifact"):
            continue
        if pd.api.types.is_numeric_dtype(frame[col]) and frame[col].notna().any():
            out.append(col)
    return out


def code_versions(frame: pd.DataFrame) -> dict[str, int]:
    """How many versions of each part of the code computed ``frame``'s rows: ``{"the harness": 2,
    "msa_conv": 1, ...}`` (rows stored without a fingerprint count as one more version, ``unrecorded``).
    The store mixes code versions when any count is above 1."""
    if not len(frame) or "code" not in frame:
        return {}
    seen: dict[str, set[str]] = {}
    for code in frame["code"]:
        if not isinstance(code, dict):
            seen.setdefault(HARNESS, set()).add("unrecorded")
            continue
        seen.setdefault(HARNESS, set()).add(str(code.get("harness")))
        for name, sha in (code.get("mechanisms") or {}).items():
            seen.setdefault(name, set()).add(str(sha))
    return {part: len(values) for part, values in seen.items()}


def mixes_code(frame: pd.DataFrame) -> bool:
    return any(n > 1 for n in code_versions(frame).values())


def _short_code(fp) -> str:
    return str(fp)[:8] if isinstance(fp, str) and fp else "unrecorded"


def group_key(frame: pd.DataFrame) -> pd.Series:
    """The configuration each row belongs to (seeds of one configuration share it). A configuration whose
    rows come from more than one version of the code is split: ``CONFIG@CODE``, one group per version."""
    if "config_id" in frame and frame["config_id"].notna().all():
        key = frame["config_id"].astype(str)
    else:
        variant = frame["variant"].fillna("") if "variant" in frame else ""
        key = frame["label"].astype(str) + "|" + variant
    if "code_fp" in frame and len(frame):
        code = frame["code_fp"].map(_short_code)
        split = code.groupby(key).transform("nunique") > 1
        key = key.where(~split, key + "@" + code)
    return key


def _order_statistic_ci(values: np.ndarray, level_z: float = 1.96) -> tuple[float, float]:
    """Distribution-free 95% interval of the median from order statistics (normal approximation of the
    binomial): the ``j``-th and ``k``-th smallest of ``n`` values, ``j, k = n/2 -+ 1.96 sqrt(n)/2``."""
    x = np.sort(values)
    n = len(x)
    half = level_z * math.sqrt(n) / 2
    j = max(1, math.floor(n / 2 - half))
    k = min(n, math.ceil(n / 2 + half + 1))
    return float(x[j - 1]), float(x[k - 1])


def pooled_latency(group: pd.DataFrame, metric: str) -> dict[str, float]:
    """One configuration's latency: ``median``, ``low``, ``high`` (95% interval of the median), ``calls``
    (timed calls pooled, 0 when the rows kept none) and ``converged`` (1 when every row's timing converged,
    0 when one did not, NaN when unknown).

    With every row's timed calls stored (schema 2) they are pooled and the interval is the order-statistic
    one. Stores without them fall back to the rows' own numbers: one row keeps its median and its bootstrap
    interval; several rows give the median of their medians and the span of their intervals (conservative)."""
    samples, converged_col, ci_low_col = POOLED[metric]
    values = pd.to_numeric(group[metric], errors="coerce").dropna() if metric in group else pd.Series([], dtype=float)
    out = {"median": math.nan, "low": math.nan, "high": math.nan, "calls": 0.0, "converged": math.nan}
    if converged_col in group and group[converged_col].notna().any():
        out["converged"] = float(group[converged_col].dropna().min())
    lists = group[samples].tolist() if samples in group else []
    if lists and all(isinstance(v, list) and v for v in lists):
        pooled = np.concatenate([np.asarray(v, dtype=float) for v in lists])
        low, high = _order_statistic_ci(pooled)
        return {**out, "median": float(np.median(pooled)), "low": low, "high": high, "calls": float(len(pooled))}
    if not len(values):
        return out
    ci_high_col = ci_low_col.replace("_low_", "_high_")
    lows = pd.to_numeric(group.get(ci_low_col, pd.Series(dtype=float)), errors="coerce").dropna()
    highs = pd.to_numeric(group.get(ci_high_col, pd.Series(dtype=float)), errors="coerce").dropna()
    low = float(lows.min()) if len(lows) else float(values.min())
    high = float(highs.max()) if len(highs) else float(values.max())
    return {**out, "median": float(values.median()), "low": low, "high": high}


def _summary(group: pd.DataFrame, metric: str) -> dict[str, float]:
    """``mean`` (for latency: the pooled median), ``std``, ``ci95`` (half-width), ``n`` and, for latency and
    throughput, ``ci_low``/``ci_high`` and ``converged``."""
    if metric in POOLED or (metric in DERIVED and DERIVED[metric] in group):
        base = DERIVED.get(metric, metric)
        lat = pooled_latency(group, base)
        n = int(pd.to_numeric(group[metric], errors="coerce").notna().sum()) if metric in group else 0
        median, low, high = lat["median"], lat["low"], lat["high"]
        if metric in DERIVED:  # images per second = k / latency, k = 1e3 * batch (the same for every seed)
            k = pd.to_numeric(group[metric] * group[base], errors="coerce").dropna()
            if not len(k) or not median:
                return {"mean": math.nan, "std": math.nan, "ci95": math.nan, "n": 0}
            k0 = float(k.iloc[0])
            median, low, high = k0 / median, k0 / high if high else math.nan, k0 / low if low else math.nan
        half = (high - low) / 2 if not (math.isnan(low) or math.isnan(high)) else math.nan
        return {
            "mean": median,
            "std": math.nan,
            "ci95": half,
            "n": n,
            "ci_low": low,
            "ci_high": high,
            "converged": lat["converged"],
        }
    mean, std, ci, n = mean_ci(group[metric])
    return {"mean": mean, "std": std, "ci95": ci, "n": n}


def display_name(label: str, variant: str | None) -> str:
    return f"{label} ({variant})" if variant else str(label)


def aggregate(frame: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per configuration (and code version, when the frame mixes them): its identity and factor
    columns, ``n`` seeds, ``code`` (short fingerprint) when versions are mixed, and per metric
    ``<metric>_mean``, ``_std``, ``_ci95`` (half-width of the 95% Student-t interval over seeds). Latency and
    throughput are the exception (:func:`pooled_latency`): ``_mean`` holds the pooled median, ``_ci95`` the
    half-width of its interval, with ``_ci_low``, ``_ci_high`` and ``_converged`` beside them."""
    if not len(frame):
        return pd.DataFrame()
    metrics = list(metrics) if metrics is not None else metric_columns(frame)
    keep = [
        c
        for c in frame.columns
        if c in ("label", "mechanism", "variant", "img_size", "data", "device") or c.startswith(("knob.", "factor."))
    ]
    mixed = mixes_code(frame)
    records = []
    for key, group in frame.groupby(group_key(frame), sort=False):
        first = group.iloc[0]
        record: dict[str, Any] = {"config_id": key, **{c: first[c] for c in keep}, "n": len(group)}
        if "variant" not in record:
            record["variant"] = ""
        if mixed:
            record["code"] = _short_code(first["code_fp"])
        for metric in metrics:
            if metric in group:
                summary = _summary(group, metric)
                summary.pop("n")
                record.update({f"{metric}_{k}": v for k, v in summary.items()})
        records.append(record)
    out = pd.DataFrame.from_records(records)
    return out.sort_values(["label", "variant"], kind="stable").reset_index(drop=True)


def aggregate_long(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Aggregates as rows ``{config_id, label, variant, metric, n, mean, std, ci95}`` (the store's table)."""
    rows = []
    for key, group in frame.groupby(group_key(frame), sort=False):
        label = str(group["label"].iloc[0])
        variant = str(group["variant"].iloc[0]) if "variant" in group else ""
        for metric in metric_columns(group):
            summary = _summary(group, metric)
            mean, std, ci, n = summary["mean"], summary["std"], summary["ci95"], summary["n"]
            if n:
                rows.append(
                    dict(config_id=key, label=label, variant=variant, metric=metric, n=n, mean=mean, std=std, ci95=ci)
                )
    return rows


def summary_rows(frame: pd.DataFrame, columns=DEFAULT_COLUMNS) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows, one per configuration; several seeds show ``mean ± ci95``. Latency and
    throughput show the pooled median ± the half-width of its interval (one seed too), with
    :data:`NOT_CONVERGED` when a seed's timing did not converge; a ``code`` column when versions are mixed."""
    present = [c for c in columns if c[0] in frame.columns and frame[c[0]].notna().any()]
    if {"budget_error", "budget_target"} <= set(frame.columns):  # no budget (target 0): "-", not "+0.0%"
        frame = frame.assign(budget_error=frame["budget_error"].where(frame["budget_target"].fillna(0) > 0))
    agg = aggregate(frame, [c[0] for c in present])
    with_variant = "variant" in agg and agg["variant"].astype(str).str.len().gt(0).any()
    with_code = "code" in agg
    headers = [
        "mechanism",
        *(["variant"] if with_variant else []),
        *(["code"] if with_code else []),
        "seeds",
        *[c[1] for c in present],
    ]
    rows = []
    for _, rec in agg.iterrows():
        row = [
            str(rec["label"]),
            *([str(rec["variant"])] if with_variant else []),
            *([str(rec["code"])] if with_code else []),
            str(int(rec["n"])),
        ]
        for metric, _, scale, fmt in present:
            mean, ci = rec[f"{metric}_mean"], rec[f"{metric}_ci95"]
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                row.append("-")
                continue
            text = fmt.format(mean * scale)
            pooled = f"{metric}_converged" in rec
            if (rec["n"] > 1 or pooled) and ci and not math.isnan(ci):
                text += " ± " + fmt.format(ci * scale).lstrip("+")
            if pooled and rec[f"{metric}_converged"] == 0:
                text += NOT_CONVERGED
            row.append(text)
        rows.append(row)
    return headers, rows


def has_unconverged(rows: Sequence[Sequence[str]]) -> bool:
    """Whether formatted rows carry the :data:`NOT_CONVERGED` mark (print :data:`NOT_CONVERGED_NOTE` then)."""
    return any(NOT_CONVERGED in str(cell) for row in rows for cell in row)
