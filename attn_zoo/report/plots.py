"""Comparison plots from a store's DataFrame: Pareto fronts, bars with confidence intervals, ablation
heatmaps. Points are configurations (seeds aggregated: mean, error bars = 95% Student-t CI over seeds; latency
and throughput: the median of the seeds' pooled timed calls with its 95% interval, see report/tables.py).
Scaling plots are in :mod:`attn_zoo.report.scaling`, receptive-field maps in :mod:`attn_zoo.report.erf`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.patheffects as pe
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.text import Text

from attn_zoo.report.stats import mean_ci
from attn_zoo.report.style import colors_for, figure, markers_for, metric_axis, metric_title, ordered, save
from attn_zoo.report.tables import NOT_CONVERGED, aggregate, display_name

LOWER_IS_BETTER = ("latency", "macs", "flops", "params", "loss", "mem", "time")


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (lower ``x`` and higher ``y`` are better), by ``x``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    order = np.lexsort((-y, x))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.array(front, dtype=int)


def _seeds_note(agg: pd.DataFrame) -> str:
    n = agg["n"].astype(int)
    if n.max() <= 1:
        return "one seed per point (no error bars)"
    seeds = f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"
    return f"mean of {seeds} seeds, error bars: 95% CI"


def pareto_plot(frame: pd.DataFrame, x: str, y: str, path: str | Path, title: str | None = None) -> Path:
    """``y`` (higher is better) against ``x`` (lower is better), one point per configuration, coloured by
    mechanism; the Pareto front is drawn as a staircase and its points are ringed."""
    path = Path(path)
    agg = aggregate(frame, [x, y]).dropna(subset=[f"{x}_mean", f"{y}_mean"])
    xlabel, sx = metric_axis(x, agg[f"{x}_mean"])
    ylabel, sy = metric_axis(y, agg[f"{y}_mean"])
    xs, ys = agg[f"{x}_mean"].to_numpy() * sx, agg[f"{y}_mean"].to_numpy() * sy
    xerr, yerr = agg[f"{x}_ci95"].fillna(0).to_numpy() * sx, agg[f"{y}_ci95"].fillna(0).to_numpy() * sy
    labels = ordered(agg["label"])
    colors, markers = colors_for(labels), markers_for(labels)
    several = agg.groupby("label").size().max() > 1 if len(agg) else False
    with figure(6.0, 3.7) as (fig, ax):
        front = pareto_front(xs, ys) if len(agg) > 1 else np.arange(len(agg))
        if len(front) > 1:
            fx, fy = xs[front], ys[front]
            ax.step(fx, fy, where="post", color="0.35", ls="--", lw=1.1, zorder=1)
        ax.scatter(xs[front], ys[front], s=170, facecolors="none", edgecolors="0.35", lw=1.0, zorder=2)
        for label in labels:
            idx = np.flatnonzero(agg["label"].to_numpy() == label)
            ax.errorbar(
                xs[idx],
                ys[idx],
                xerr=xerr[idx] if xerr[idx].any() else None,
                yerr=yerr[idx] if yerr[idx].any() else None,
                fmt=markers[label],
                color=colors[label],
                mec="white",
                mew=0.7,
                ms=7,
                elinewidth=1.0,
                ls="none",
                zorder=3,
            )

        for axis_metric in (x, y):  # a latency whose timing did not converge is marked at its point
            flags = agg[f"{axis_metric}_converged"].to_numpy() if f"{axis_metric}_converged" in agg else []
            for i in np.flatnonzero(np.asarray(flags) == 0):
                ax.annotate(NOT_CONVERGED, (xs[i], ys[i]), xytext=(-9, 3), textcoords="offset points", fontsize=9)
        if len(xs) and xs.min() > 0 and xs.max() / xs.min() > 20:
            ax.set_xscale("log")

        ax.set_xlabel(xlabel + " — lower is better")
        ax.set_ylabel(ylabel + " — higher is better")
        ax.set_title(title or f"{_cap(metric_title(y))} vs {metric_title(x)}")
        handles = [
            Line2D([], [], marker=markers[lb], color=colors[lb], mec="white", ls="none", ms=7, label=lb)
            for lb in labels
        ]
        handles.append(
            Line2D([], [], color="0.35", ls="--", marker="o", mfc="none", mec="0.35", ms=9, label="Pareto front")
        )
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=_seeds_note(agg).replace(", ", ",\n")
        )
        ax.margins(x=0.08, y=0.12)
        bound_axis(ax, "x", x)
        bound_axis(ax, "y", y)
        if several:  # after the limits are final: labels are placed in screen space
            # with many points only the front is named, or the labels would bury the data
            named = [i for i in range(len(agg)) if agg["variant"].iloc[i] and (len(agg) <= 10 or i in set(front))]
            _annotate(ax, xs, ys, [agg["variant"].iloc[i] for i in range(len(agg))], named)
        save(fig, path)
    return path


def _annotate(ax, xs: np.ndarray, ys: np.ndarray, texts: list[str], which: list[int]) -> None:
    """Name points without overlap: points at one spot share a label; a label that would cover another
    moves down (or up) until it is clear, measured on the drawn text."""
    spots: dict[tuple[float, float], list[int]] = {}
    for i in which:
        px, py = ax.transData.transform((xs[i], ys[i]))
        spots.setdefault((round(px / 4), round(py / 4)), []).append(i)
    ax.figure.canvas.draw()  # lay the figure out once, so text extents below are the drawn ones
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for key in sorted(spots, key=lambda k: (-k[1], k[0])):
        members = spots[key]
        text = "; ".join(texts[i] for i in members)
        for dy in (4, -8, 14, -18, 24, -28, 34, -38):
            note = ax.annotate(
                text,
                (xs[members[0]], ys[members[0]]),
                xytext=(6, dy),
                textcoords="offset points",
                fontsize=6.5,
                color="0.25",
                va="center",
                path_effects=[pe.withStroke(linewidth=2, foreground="white")],
                # a label moved off its point keeps a thin line to it
                arrowprops=None if dy == 4 else {"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkB": 4},
            )
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer).expanded(1.04, 1.15)  # the text, not its leader line
            if not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            note.remove()
        else:
            placed.append(box)  # crowded: keep the last try rather than drop the name
            ax.add_artist(note)


def bar_plot(frame: pd.DataFrame, metric: str, path: str | Path, title: str | None = None) -> Path:
    """One horizontal bar per configuration (mean over seeds) with its 95% confidence interval, coloured by
    mechanism; each bar's label carries its number, so nothing is written over the bars. A log axis when
    the values span more than two orders of magnitude."""
    path = Path(path)
    agg = aggregate(frame, [metric]).dropna(subset=[f"{metric}_mean"])
    agg = agg.assign(_order=agg["label"].map({lb: i for i, lb in enumerate(ordered(agg["label"]))}))
    factors = [c for c in agg.columns if c.startswith("factor.")]
    agg = agg.sort_values(["_order", *factors, "variant"], kind="stable", na_position="first")
    label_text, scale = metric_axis(metric, agg[f"{metric}_mean"])
    means = agg[f"{metric}_mean"].to_numpy() * scale
    cis = agg[f"{metric}_ci95"].fillna(0).to_numpy() * scale
    colors = colors_for(ordered(agg["label"]))
    # latency: pooled timed calls; a configuration whose timing did not converge is hatched and marked
    unconverged = (agg[f"{metric}_converged"] == 0).to_numpy() if f"{metric}_converged" in agg else np.zeros(len(agg))
    labels = []
    for lb, variant, m, c, bad in zip(agg["label"], agg["variant"], means, cis, unconverged):
        digits = _digits(m)
        number = f"{m:,.{digits}f}" + (f" ± {c:,.{digits}f}" if c > 0 else "") + (NOT_CONVERGED if bad else "")
        labels.append(f"{display_name(lb, variant)}   {number}")
    with figure(6.4, 0.32 * len(agg) + 1.3) as (fig, ax):
        pos = np.arange(len(agg))[::-1]  # first configuration on top
        ax.barh(
            pos,
            means,
            xerr=cis if cis.any() else None,
            color=[colors[lb] for lb in agg["label"]],
            edgecolor="white",
            height=0.72,
            error_kw={"elinewidth": 1.0, "capsize": 2.5, "ecolor": "0.2"},
            hatch=["////" if bad else None for bad in unconverged],
            zorder=2,
        )
        ax.set_yticks(pos, labels, fontsize=7.5)
        ax.tick_params(axis="y", length=0)
        positive = means[means > 0]
        if len(positive) and positive.max() / positive.min() > 100:
            ax.set_xscale("log")
            label_text += ", log scale"
        else:
            top = np.nanmax(means + cis) if len(means) else 1.0
            ax.set_xlim(0, top * 1.05 if top > 0 else 1)
            bound_axis(ax, "x", metric)
        ax.set_xlabel(label_text)
        ax.grid(axis="y", visible=False)
        ax.spines["left"].set_visible(False)
        note = _seeds_note(agg)
        if f"{metric}_converged" in agg:
            note = "median of all timed calls, pooled over seeds; error bars: 95% CI of the median"
            if unconverged.any():
                note += f"; {NOT_CONVERGED} hatched: timing did not converge"
        _title(ax, title or _cap(metric_title(metric)), note)
        save(fig, path)
    return path


def heatmap_plot(
    frame: pd.DataFrame,
    x: str,
    y: str,
    metric: str,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """``metric`` over two knobs (columns ``x`` and ``y``): mean over seeds in each cell, with its 95% CI
    when there are several seeds; a colour bar names the metric. Empty combinations are hatched."""
    path = Path(path)
    data = frame.dropna(subset=[metric])
    xs = _sorted_values(data[x])
    ys = _sorted_values(data[y])
    means = np.full((len(ys), len(xs)), np.nan)
    cis = np.zeros_like(means)
    counts = np.zeros_like(means, dtype=int)
    for (xv, yv), group in data.groupby([x, y]):
        mean, _, ci, n = mean_ci(group[metric])
        i, j = ys.index(yv), xs.index(xv)
        means[i, j], cis[i, j], counts[i, j] = mean, ci, n
    label_text, scale = metric_axis(metric, means[np.isfinite(means)])
    means, cis = means * scale, cis * scale
    cmap = "viridis_r" if lower_is_better(metric) else "viridis"
    with figure(1.1 * len(xs) + 2.6, 0.8 * len(ys) + 1.6) as (fig, ax):
        ax.grid(False)
        ax.set_facecolor("0.92")
        image = ax.imshow(np.ma.masked_invalid(means), cmap=cmap, aspect="auto", origin="lower")
        lo, hi = (
            np.nanmin(means) if np.isfinite(means).any() else 0,
            np.nanmax(means) if np.isfinite(means).any() else 1,
        )
        for i in range(len(ys)):
            for j in range(len(xs)):
                if not np.isfinite(means[i, j]):
                    ax.add_patch(_hatch(j, i))
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="0.4")
                    continue
                frac = 0.5 if hi == lo else (means[i, j] - lo) / (hi - lo)
                frac = 1 - frac if cmap.endswith("_r") else frac
                digits = _digits(means[i, j])
                text = f"{means[i, j]:.{digits}f}" + (f"\n± {cis[i, j]:.{digits}f}" if counts[i, j] > 1 else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color="white" if frac < 0.55 else "black")
        ax.set_xticks(range(len(xs)), [_tick(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_tick(v) for v in ys])
        ax.set_xlabel(_axis_name(x))
        ax.set_ylabel(_axis_name(y))
        for spine in ax.spines.values():
            spine.set_visible(False)
        bar = fig.colorbar(image, ax=ax, fraction=0.06, pad=0.03)
        bar.set_label(label_text)
        bar.outline.set_visible(False)
        seeds = int(counts.max()) if counts.size else 0
        note = f"mean ± 95% CI over {seeds} seeds" if seeds > 1 else "one seed per cell"
        _title(ax, title or f"{_cap(metric_title(metric))}: {_knob_name(y)} × {_knob_name(x)}", note)
        save(fig, path)
    return path


def bound_axis(ax, axis: str, metric: str) -> None:
    """Keep an axis inside what the metric can be (no negative latency, no accuracy past 100%), so a wide
    confidence interval from few seeds does not stretch the plot into impossible values."""
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    if (ax.get_xscale() if axis == "x" else ax.get_yscale()) == "log":
        return
    new_lo = max(lo, 0.0)
    new_hi = min(hi, 100.0) if metric_axis(metric)[0].endswith("(%)") else hi
    if new_hi > new_lo and (new_lo, new_hi) != (lo, hi):
        (ax.set_xlim if axis == "x" else ax.set_ylim)(new_lo, new_hi)


def _title(ax, title: str, note: str) -> None:
    """Title, and under it a small note (seeds, CI) that never collides with ticks or labels."""
    ax.set_title(title, pad=16)
    ax.text(0.5, 1.015, note, transform=ax.transAxes, ha="center", va="bottom", fontsize=7, color="0.35")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _axis_name(column: str) -> str:
    name = _knob_name(column)
    return "input resolution (px)" if name in ("img_size", "resolution") else name


def _digits(value: float) -> int:
    a = abs(value)
    return 0 if a >= 100 else 1 if a >= 10 else 2


def _hatch(j: int, i: int):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.7", lw=0)


def _sorted_values(column: pd.Series) -> list:
    values = list(dict.fromkeys(column.dropna().tolist()))
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _knob_name(column: str) -> str:
    return column.split(".")[-1]


def _tick(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "-"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def varied_columns(frame: pd.DataFrame, prefixes: Sequence[str] = ("knob.", "factor.")) -> list[str]:
    """Knob and factor columns that take at least two values (the axes an ablation varies)."""
    out = []
    for col in frame.columns:
        if col.startswith(tuple(prefixes)) and frame[col].dropna().nunique() > 1:
            out.append(col)
    return out


def resolution_columns(frame: pd.DataFrame, metric: str = "test_top1") -> dict[int, str]:
    """``{resolution: column}`` for the ``<metric>@R`` columns of evaluations at other resolutions."""
    out = {}
    for col in frame.columns:
        name, _, res = col.partition("@")
        if name == metric and res.isdigit() and frame[col].notna().any():
            out[int(res)] = col
    return dict(sorted(out.items()))


def resolution_plot(frame: pd.DataFrame, path: str | Path, metric: str = "test_top1", title: str | None = None) -> Path:
    """Accuracy against the evaluation resolution (the model trained at one size, evaluated unchanged at
    others): one line per configuration, mean over seeds with the 95% CI as error bars."""
    path = Path(path)
    columns = resolution_columns(frame, metric)
    agg = aggregate(frame, list(columns.values()))
    colors = colors_for(ordered(agg["label"]))
    markers = markers_for(ordered(agg["label"]))
    resolutions = np.array(list(columns))
    with figure(5.6, 3.8) as (fig, ax):
        for _, rec in agg.iterrows():
            means = np.array([rec[f"{c}_mean"] for c in columns.values()], dtype=float)
            cis = np.nan_to_num(np.array([rec[f"{c}_ci95"] for c in columns.values()], dtype=float))
            ax.errorbar(
                resolutions,
                means,
                yerr=cis if cis.any() else None,
                label=display_name(rec["label"], rec["variant"]),
                color=colors[rec["label"]],
                marker=markers[rec["label"]],
                markersize=4,
                capsize=2.5,
                linewidth=1.2,
            )
        trained = frame["img_size"].dropna().unique() if "img_size" in frame else []
        for size in trained:
            if resolutions.min() <= size <= resolutions.max():
                ax.axvline(size, color="0.6", linestyle=":", linewidth=1, zorder=0)
        ax.set_xticks(resolutions, [str(r) for r in resolutions])
        ax.set_xlabel("evaluation resolution (px; dotted: training resolution)")
        ax.set_ylabel(metric_axis(metric, pd.Series([1.0]))[0])
        ax.legend(fontsize=7, ncol=2, frameon=False, loc="best")
        _title(ax, title or "Accuracy vs evaluation resolution", _seeds_note(agg))
        save(fig, path)
    return path
