"""Figures that answer "which mechanism is better at an equal budget, and by how much":

- :func:`forest_plot`: accuracy and the paired difference to the baseline, with 95% intervals, mechanisms
  ordered by the estimate, the budget tolerance in the title;
- :func:`budget_curves`: accuracy against the budget target (a sweep over ``budget.target``), one line per
  mechanism with its 95% band over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import NullLocator

from attn_zoo.report.paired import PairedTable
from attn_zoo.report.stats import mean_ci
from attn_zoo.report.style import colors_for, figure, markers_for, metric_axis, ordered, save


def forest_plot(table: PairedTable, path: str | Path) -> Path:
    """Left: accuracy (mean, 95% t-interval over seeds); right: difference to the baseline (paired t interval
    thick, bootstrap thin), the band ±MDD shaded; one row per mechanism, best on top."""
    path = Path(path)
    rows = table.rows  # ranked best first
    labels = [r.label for r in rows]
    colors = colors_for(ordered(labels))
    ys = np.arange(len(rows))[::-1]
    with figure(8.0, 0.42 * len(rows) + 1.6, ncols=2, sharey=True) as (fig, (left, right)):
        for y, r in zip(ys, rows):
            c = colors[r.label]
            ci = r.ci if r.n > 1 and math.isfinite(r.ci) else 0.0
            left.errorbar(r.mean, y, xerr=ci, fmt="o", color=c, capsize=3)
            left.text(r.mean, y + 0.18, r.group, ha="center", va="bottom", fontsize=7, color="#59636e")
            if r.diff is None:
                right.plot([0], [y], marker="s", color=c)
                right.text(0, y + 0.18, "baseline", ha="center", va="bottom", fontsize=7, color="#59636e")
                continue
            d = r.diff
            if math.isfinite(d.low):
                right.plot([d.low, d.high], [y, y], color=c, lw=3, solid_capstyle="butt", alpha=0.8)
            if r.boot and all(math.isfinite(v) for v in r.boot):
                right.plot(list(r.boot), [y - 0.22, y - 0.22], color=c, lw=1)
            right.plot([d.mean], [y], marker="o", color=c)
        if math.isfinite(table.mdd):
            right.axvspan(-table.mdd, table.mdd, color="#eef1f4", zorder=0, label=f"±MDD {table.mdd:.2f}")
            right.legend(loc="lower right", fontsize=7, frameon=False)
        right.axvline(0, color="#59636e", lw=0.8)
        left.set_yticks(ys, labels)
        left.set_xlabel(f"{metric_axis(table.metric)[0]}")
        left.set_title("accuracy, 95% CI over seeds (letters: ranking groups)", fontsize=8)
        right.set_xlabel(f"difference to {table.baseline} (points)")
        right.set_title("paired difference: t (thick), bootstrap (thin)", fontsize=8)
        fig.suptitle(f"{table.seeds} paired seeds; {table.budget}", fontsize=9)
        save(fig, path)
    return path


def budget_curves(frame: pd.DataFrame, metric: str, path: str | Path, x: str = "budget_target") -> Path:
    """``metric`` against the budget (``x``, log axis), one line per mechanism: mean over seeds and a 95%
    t-band (seeds at each budget)."""
    path = Path(path)
    labels = ordered(frame["label"].astype(str))
    colors, markers = colors_for(labels), markers_for(labels)
    xlabel, sx = metric_axis("macs", frame[x].dropna())
    with figure(6.0, 3.8) as (fig, ax):
        for label in labels:
            rows = frame[frame["label"].astype(str) == label]
            points = []
            for budget, g in rows.groupby(x):
                mean, _, ci, n = mean_ci(g[metric])
                points.append((float(budget) * sx, mean, ci if n > 1 else 0.0))
            if not points:
                continue
            xs, ms, cis = (np.array(v) for v in zip(*sorted(points)))
            ax.plot(xs, ms, marker=markers[label], color=colors[label], label=label)
            ax.fill_between(xs, ms - cis, ms + cis, color=colors[label], alpha=0.15, lw=0)
        ax.set_xscale("log")
        ticks = sorted(float(t) * sx for t in frame[x].dropna().unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(f"budget target: {xlabel}")
        ax.set_ylabel(metric_axis(metric)[0])
        ax.legend(fontsize=7, frameon=False, ncol=2)
        save(fig, path)
    return path
