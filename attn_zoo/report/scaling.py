"""Latency and memory against input resolution on log-log axes, with the fitted power-law exponent.

The x axis is the number of pixels (ticks named by resolution, e.g. 64×64), proportional to the number of
tokens, so the drawn slope is the exponent of ``metric ~ tokens ** b``: 1 is linear in tokens (windowed,
neighbourhood attention), 2 quadratic (global attention). The exponents come from
``attn_zoo.measure.scaling.fit_exponents(frame) -> DataFrame[label, metric, exponent, ...]`` when the
measurement package provides it; otherwise (or when a mechanism has several series, e.g. two window sizes)
from :func:`fit_exponents_local`, the same least-squares line through ``log y`` against ``log img_size**2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter, NullLocator

from attn_zoo.report.stats import mean_ci
from attn_zoo.report.style import colors_for, figure, markers_for, metric_axis, metric_title, ordered, save

X = "img_size"
_X_FACTORS = ("factor.model.img_size", "factor.img_size", "factor.data.resolution")


def fit_exponents_local(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per label and metric: ``exponent`` (slope of log metric vs log pixel count), ``intercept``, ``r2``,
    ``n``."""
    rows = []
    for label, group in frame.groupby("label", sort=False):
        for metric in metrics:
            if metric not in group:
                continue
            fit = _fit(group[X].to_numpy(float) ** 2, group[metric].to_numpy(float))
            if fit is not None:
                rows.append({"label": label, "metric": metric, **fit})
    return pd.DataFrame(rows, columns=["label", "metric", "exponent", "intercept", "r2", "n"])


def _fit(x: np.ndarray, y: np.ndarray) -> dict | None:
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    if len(np.unique(lx)) < 2:
        return None
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = 1 - (resid**2).sum() / total if total > 0 else 1.0
    return {"exponent": float(slope), "intercept": float(intercept), "r2": float(r2), "n": int(ok.sum())}


def exponents(frame: pd.DataFrame, metric: str) -> dict[str, float]:
    """``{label: exponent}`` from the measurement package's fit when it has one, else the local fit."""
    try:
        from attn_zoo.measure.scaling import fit_exponents
    except ImportError:
        fit_exponents = None
    if fit_exponents is not None:
        try:
            try:
                fits = fit_exponents(frame, metrics=[metric])
            except TypeError:
                fits = fit_exponents(frame)
            fits = fits[fits["metric"] == metric]
            if len(fits):
                return dict(zip(fits["label"], fits["exponent"].astype(float)))
        except Exception:  # a different frame layout than it expects: the local fit still answers
            pass
    fits = fit_exponents_local(frame, [metric])
    return dict(zip(fits["label"], fits["exponent"]))


def _series(frame: pd.DataFrame) -> pd.Series:
    """Series key: the label plus any factor other than the resolution (two window sizes = two lines)."""
    others = [c for c in frame.columns if c.startswith("factor.") and c not in _X_FACTORS and frame[c].nunique() > 1]

    def name(row: pd.Series) -> str:
        parts = [
            f"{c.rpartition('.')[2]}={row[c]:g}" if isinstance(row[c], float) else f"{c.rpartition('.')[2]}={row[c]}"
            for c in others
            if pd.notna(row[c])
        ]
        return str(row["label"]) + (f" ({', '.join(parts)})" if parts else "")

    return frame.apply(name, axis=1) if len(frame) else pd.Series([], dtype=str)


def scaling_plot(frame: pd.DataFrame, metric: str, path: str | Path, title: str | None = None) -> Path:
    """``metric`` against input resolution, log-log, one line per mechanism (and other factor values), the
    fitted exponent in the legend and the fitted power law drawn dashed."""
    path = Path(path)
    data = frame.dropna(subset=[metric, X]).copy()
    data["_series"] = _series(data)
    label_text, scale = metric_axis(metric, data[metric])
    owner = dict(zip(data["_series"], data["label"]))
    order = ordered(data["label"])
    series = sorted(owner, key=lambda s: (order.index(owner[s]), s))
    per_label = data.groupby("label")["_series"].nunique()
    shared = exponents(data, metric) if (per_label <= 1).all() else {}
    labels = ordered(data["label"])
    colors, markers = colors_for(labels), markers_for(labels)
    line_styles = ["-", ":", "-.", (0, (5, 1))]
    with figure(5.0, 3.7) as (fig, ax):
        for name in series:
            group = data[data["_series"] == name]
            label = group["label"].iloc[0]
            stats = [(size, *mean_ci(g[metric])[:3]) for size, g in group.groupby(X)]
            xs = np.array([s[0] for s in stats], float) ** 2
            ys = np.array([s[1] for s in stats]) * scale
            cis = np.array([s[3] for s in stats]) * scale
            local = _fit(xs, ys)
            slope = shared.get(label, local["exponent"] if local else np.nan)
            style = line_styles[[s for s in series if owner[s] == label].index(name) % len(line_styles)]
            ax.errorbar(
                xs,
                ys,
                yerr=cis if cis.any() else None,
                fmt=markers[label],
                color=colors[label],
                ms=5.5,
                mec="white",
                mew=0.6,
                ls="none",
                zorder=3,
            )
            if local is not None:
                # the line has the legend's slope, placed through the data's geometric centre
                lx = np.log(xs[ys > 0])
                icpt = float(np.mean(np.log(ys[ys > 0]) - slope * lx))
                grid = np.exp(np.linspace(lx.min(), lx.max(), 20))
                ax.plot(grid, np.exp(icpt) * grid**slope, color=colors[label], ls=style, lw=1.2, zorder=2)
            text = f"{name}: {slope:.2f}" if np.isfinite(slope) else f"{name}: one resolution"
            ax.plot([], [], marker=markers[label], color=colors[label], ls=style, label=text)
        ax.set_xscale("log")
        ax.set_yscale("log")
        sides = sorted(data[X].unique())
        ax.xaxis.set_major_locator(FixedLocator([float(v) ** 2 for v in sides]))
        ax.xaxis.set_major_formatter(FixedFormatter([f"{v:g}×{v:g}" for v in sides]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.25)
        ax.set_xlabel("input resolution (px), log scale of the pixel count")
        ax.set_ylabel(label_text + ", log scale")
        ax.set_title(title or f"{metric_title(metric)[:1].upper()}{metric_title(metric)[1:]} vs resolution")
        ax.legend(loc="upper left", title="exponent b in cost ~ tokens$^b$")
        save(fig, path)
    return path
