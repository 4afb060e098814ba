"""Comparison plots from a store's DataFrame (matplotlib, Agg): readable at a glance, ready for a paper."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from attn_zoo.report.stats import mean_ci

AXIS_LABELS = {
    "macs": "MACs per image (M)",
    "params": "parameters (M)",
    "latency_median_ms": "latency, batch 1 (ms)",
    "val_top1": "validation top-1 accuracy (%)",
    "attention_macs": "attention MACs per image (M)",
}
_SCALE = {"macs": 1e-6, "params": 1e-6, "attention_macs": 1e-6}


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of points not dominated by another (lower x and higher y is better), sorted by x."""
    order = np.lexsort((-y, x))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.array(front, dtype=int)


def pareto_plot(frame: pd.DataFrame, x: str, y: str, path: str | Path, title: str | None = None) -> Path:
    """Scatter of ``y`` against ``x`` per mechanism (mean over seeds, 95% CI error bars), front marked."""
    path = Path(path)
    data = frame.dropna(subset=[x, y])
    groups = data.groupby("label", sort=True)
    labels = list(groups.groups)
    xs = np.array([groups.get_group(g)[x].mean() * _SCALE.get(x, 1.0) for g in labels])
    ys = np.array([groups.get_group(g)[y].mean() for g in labels])
    errs = np.array([mean_ci(groups.get_group(g)[y])[2] for g in labels])
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=150)
    colors = plt.get_cmap("tab10")
    for i, label in enumerate(labels):
        ax.errorbar(
            xs[i],
            ys[i],
            yerr=errs[i] if errs[i] > 0 else None,
            fmt="o",
            ms=7,
            capsize=3,
            color=colors(i % 10),
            label=label,
            zorder=3,
        )
        ax.annotate(label, (xs[i], ys[i]), textcoords="offset points", xytext=(6, 5), fontsize=8)
    if len(labels) > 1:
        front = pareto_front(xs, ys)
        ax.step(xs[front], ys[front], where="post", color="0.4", ls="--", lw=1.2, zorder=2, label="Pareto front")
    n_seeds = int(groups.size().max()) if len(labels) else 0
    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    ax.set_title(title or f"{AXIS_LABELS.get(y, y)} vs {AXIS_LABELS.get(x, x)}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(
        fontsize=7,
        loc="best",
        title=f"mean of {n_seeds} seed(s), 95% CI" if n_seeds > 1 else None,
        title_fontsize=7,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
