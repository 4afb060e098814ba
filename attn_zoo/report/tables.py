"""Tables from stored rows: one row per label (mechanism or preset), seeds aggregated with 95% CIs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from attn_zoo.report.stats import mean_ci

# (metric column, header, scale, format)
DEFAULT_COLUMNS = (
    ("params", "params (M)", 1e-6, "{:.3f}"),
    ("macs", "MACs (M)", 1e-6, "{:.2f}"),
    ("attention_macs", "attn MACs (M)", 1e-6, "{:.2f}"),
    ("budget_error", "budget err", 100, "{:+.1f}%"),
    ("latency_median_ms", "latency (ms)", 1, "{:.2f}"),
    ("val_top1", "top-1 (%)", 1, "{:.1f}"),
)


def aggregate(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per label: ``<metric>_mean``, ``_std``, ``_ci95`` (half-width) and ``n`` seeds."""
    records = []
    for label, group in frame.groupby("label", sort=True):
        record = {"label": label, "n": len(group)}
        for metric in metrics:
            if metric in group:
                mean, std, ci, _ = mean_ci(group[metric])
                record.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci95": ci})
        records.append(record)
    return pd.DataFrame.from_records(records)


def summary_rows(frame: pd.DataFrame, columns=DEFAULT_COLUMNS) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows; a metric with several seeds shows ``mean ± ci95``."""
    present = [c for c in columns if c[0] in frame.columns and frame[c[0]].notna().any()]
    agg = aggregate(frame, [c[0] for c in present])
    headers = ["mechanism", "seeds", *[c[1] for c in present]]
    rows = []
    for _, rec in agg.iterrows():
        row = [rec["label"], str(int(rec["n"]))]
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
