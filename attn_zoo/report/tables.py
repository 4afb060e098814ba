"""Tables from stored rows: one row per configuration (seeds aggregated with mean, std and 95% CI)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from attn_zoo.report.stats import mean_ci

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
    "img_size",
    "dims",
    "depths",
    "data",
    "backends",
    "device",
)


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric metric columns of a store frame (not identity, knob, factor or artifact columns)."""
    out = []
    for col in frame.columns:
        if col in IDENTITY_COLUMNS or col.split(".")[0] in ("knob", "factor", "artifact"):
            continue
        if pd.api.types.is_numeric_dtype(frame[col]) and frame[col].notna().any():
            out.append(col)
    return out


def group_key(frame: pd.DataFrame) -> pd.Series:
    """The configuration each row belongs to (seeds of one configuration share it)."""
    if "config_id" in frame and frame["config_id"].notna().all():
        return frame["config_id"]
    variant = frame["variant"].fillna("") if "variant" in frame else ""
    return frame["label"].astype(str) + "|" + variant


def display_name(label: str, variant: str | None) -> str:
    return f"{label} ({variant})" if variant else str(label)


def aggregate(frame: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per configuration: its identity and factor columns, ``n`` seeds, and per metric
    ``<metric>_mean``, ``_std``, ``_ci95`` (half-width of the 95% Student-t interval)."""
    if not len(frame):
        return pd.DataFrame()
    metrics = list(metrics) if metrics is not None else metric_columns(frame)
    keep = [
        c
        for c in frame.columns
        if c in ("label", "mechanism", "variant", "img_size", "data", "device") or c.startswith(("knob.", "factor."))
    ]
    records = []
    for key, group in frame.groupby(group_key(frame), sort=False):
        first = group.iloc[0]
        record: dict[str, Any] = {"config_id": key, **{c: first[c] for c in keep}, "n": len(group)}
        if "variant" not in record:
            record["variant"] = ""
        for metric in metrics:
            if metric in group:
                mean, std, ci, _ = mean_ci(group[metric])
                record.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci95": ci})
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
            mean, std, ci, n = mean_ci(group[metric])
            if n:
                rows.append(
                    dict(config_id=key, label=label, variant=variant, metric=metric, n=n, mean=mean, std=std, ci95=ci)
                )
    return rows


def summary_rows(frame: pd.DataFrame, columns=DEFAULT_COLUMNS) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows, one per configuration; several seeds show ``mean ± ci95``."""
    present = [c for c in columns if c[0] in frame.columns and frame[c[0]].notna().any()]
    if {"budget_error", "budget_target"} <= set(frame.columns):  # no budget (target 0): "-", not "+0.0%"
        frame = frame.assign(budget_error=frame["budget_error"].where(frame["budget_target"].fillna(0) > 0))
    agg = aggregate(frame, [c[0] for c in present])
    with_variant = "variant" in agg and agg["variant"].astype(str).str.len().gt(0).any()
    headers = ["mechanism", *(["variant"] if with_variant else []), "seeds", *[c[1] for c in present]]
    rows = []
    for _, rec in agg.iterrows():
        row = [str(rec["label"]), *([str(rec["variant"])] if with_variant else []), str(int(rec["n"]))]
        for metric, _, scale, fmt in present:
            mean, ci = rec[f"{metric}_mean"], rec[f"{metric}_ci95"]
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                row.append("-")
                continue
            text = fmt.format(mean * scale)
            if rec["n"] > 1 and ci and not math.isnan(ci):
                text += " ± " + fmt.format(ci * scale).lstrip("+")
            row.append(text)
        rows.append(row)
    return headers, rows
