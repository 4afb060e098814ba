"""Which figures a store's rows support, made in one call: what ``attn-zoo run`` and ``report`` draw.

- at one matched budget: a forest plot of accuracy and of the paired difference to the baseline;
- accuracy vs budget, one curve per mechanism, when the grid sweeps ``budget.target``;
- accuracy vs MACs and vs parameters (Pareto fronts), only when the budgets really differ (the achieved
  budgets spread beyond the matcher's tolerance), and vs latency from cells whose timing converged;
- latency, memory and MACs vs resolution (log-log, fitted slopes), when the grid varies the resolution;
- ablation heatmaps, for each mechanism whose cells vary two knobs (or factors);
- bars with 95% confidence intervals for accuracy and latency;
- accuracy vs evaluation resolution, when trained models were evaluated at other sizes;
- effective receptive fields side by side, when cells stored ERF maps.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

import pandas as pd

from attn_zoo.report.erf import artifact_columns, erf_plot, load_maps
from attn_zoo.report.paired import PairedTable, paired_tables
from attn_zoo.report.paired_plots import budget_curves, forest_plot
from attn_zoo.report.plots import (
    bar_plot,
    heatmap_plot,
    pareto_plot,
    resolution_columns,
    resolution_plot,
    varied_columns,
)
from attn_zoo.report.scaling import scaling_plot
from attn_zoo.report.style import accuracy_metric, is_memory_metric, metric_title
from attn_zoo.report.tables import group_key

LATENCY = "latency_median_ms"
MAX_BARS = 16


@dataclasses.dataclass(frozen=True)
class Figure:
    path: Path
    title: str
    caption: str


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and frame[column].notna().any()


def make_figures(
    frame: pd.DataFrame, out_dir: str | Path, store_dir: str | Path | None = None, baseline: str | None = None
) -> list[Figure]:
    """Draw every figure the ``ok`` rows of ``frame`` support into ``out_dir``; returns them in order.
    ``baseline``: the mechanism the paired differences are taken to (default: the first)."""
    out_dir = Path(out_dir)
    figures: list[Figure] = []
    if not len(frame):
        return figures
    configs = group_key(frame).nunique()
    accuracy = accuracy_metric(frame)  # test_top1, or val_top1 in stores without a test split
    seeds = "Points are configurations: mean over seeds, error bars the 95% confidence interval over seeds."

    paired = paired_tables(frame, baseline, store_dir=store_dir) if _has(frame, accuracy) else []
    one_target = not _has(frame, "budget_target") or frame["budget_target"].nunique() == 1
    equal_budget = bool(paired) and one_target and all(t.equal_budget for t in paired)
    figures += _paired_figures(paired, out_dir)
    if _has(frame, accuracy) and _has(frame, "budget_target") and frame["budget_target"].nunique() > 1:
        path = budget_curves(frame, accuracy, out_dir / f"{accuracy}_vs_budget.png")
        figures.append(
            Figure(
                path,
                "Accuracy vs budget",
                "One line per mechanism over the budget targets of the sweep: mean over seeds, band the 95% "
                "confidence interval over seeds.",
            )
        )

    if _has(frame, accuracy) and configs > 1:
        # at one matched budget the cost axes only show the matcher's tolerance: no Pareto front there
        costs = [] if equal_budget else [("macs", "macs"), ("params", "params")]
        for x, name in (*costs[:1], (LATENCY, "latency"), *costs[1:]):
            if not _has(frame, x):
                continue
            rows, note = frame, ""
            if x == LATENCY and "latency_fwd_converged" in frame:
                rows = frame[frame["latency_fwd_converged"] == 1]
                note = f" Only cells whose latency converged to its CI target ({len(rows)} of {len(frame)})."
            if group_key(rows).nunique() < 2:
                continue
            path = pareto_plot(rows, x, accuracy, out_dir / f"accuracy_vs_{name}.png")
            figures.append(
                Figure(
                    path,
                    f"Accuracy vs {metric_title(x)}",
                    f"Top-1 accuracy against {metric_title(x)}; the dashed staircase is the Pareto front "
                    f"(configurations no other beats on both axes, ringed). {seeds}{note}",
                )
            )

    if _has(frame, "img_size") and frame["img_size"].nunique() > 1:
        memory = [c for c in ("peak_mem_fwd_mb", "peak_mem_train_mb") if c in frame]
        memory = memory or sorted(c for c in frame.columns if is_memory_metric(c))
        metrics = [LATENCY, "latency_train_median_ms", *memory, "macs"]
        for metric in metrics:
            if _has(frame, metric):
                path = scaling_plot(frame, metric, out_dir / f"scaling_{metric}.png")
                figures.append(
                    Figure(
                        path,
                        f"{_cap(metric_title(metric))} vs resolution",
                        "Log-log axes; the legend gives each line's fitted exponent b of cost ~ tokens^b "
                        "(1 = linear in the number of tokens, 2 = quadratic).",
                    )
                )

    target = accuracy if _has(frame, accuracy) else LATENCY if _has(frame, LATENCY) else None
    if target is not None:
        for label, group in frame.groupby("label", sort=True):
            axes = [c for c in varied_columns(group) if not c.startswith("factor.knobs.")]
            for x, y in itertools.islice(itertools.combinations(axes, 2), 3):
                path = heatmap_plot(group, x, y, target, out_dir / f"heatmap_{_slug(label)}_{_slug(x)}_{_slug(y)}.png")
                path = Path(path)
                figures.append(
                    Figure(
                        path,
                        f"{label}: {metric_title(target)} over {x.split('.')[-1]} × {y.split('.')[-1]}",
                        "Ablation heatmap: each cell is the mean over seeds (± the 95% CI with several seeds).",
                    )
                )

    if len(resolution_columns(frame, accuracy)) > 1:
        path = resolution_plot(frame, out_dir / f"{accuracy}_vs_resolution.png", accuracy)
        figures.append(
            Figure(
                path,
                "Accuracy vs evaluation resolution",
                "Each model trained at one resolution (dotted) and evaluated unchanged at the others; a "
                f"mechanism missing a point could not run at that size (the cell's reason says why). {seeds}",
            )
        )

    if 1 < configs <= MAX_BARS:
        for metric in (accuracy, LATENCY):
            if _has(frame, metric):
                path = bar_plot(frame, metric, out_dir / f"bars_{metric}.png")
                figures.append(Figure(path, _cap(metric_title(metric)), seeds.replace("Points", "Bars")))

    if store_dir is not None:
        for column in artifact_columns(frame):
            # maps side by side at one resolution (the largest): sizes in pixels compare directly
            rows = frame[frame["img_size"] == frame["img_size"].max()] if _has(frame, "img_size") else frame
            maps = load_maps(rows, store_dir, column)
            if not maps:
                continue
            kind = column.removeprefix("artifact.")
            when = " after training" if "trained" in kind and "untrained" not in kind else ""
            when = " at initialisation" if "untrained" in kind else when
            if _has(rows, "img_size") and frame["img_size"].nunique() > 1:
                when += f", {int(rows['img_size'].iloc[0])}×{int(rows['img_size'].iloc[0])} input"
            path = erf_plot(maps, out_dir / f"{_slug(kind)}_maps.png", title=f"Effective receptive fields{when}")
            figures.append(
                Figure(
                    path,
                    f"Effective receptive fields{when}",
                    "Gradient magnitude at the input for the centre output, normalised to its maximum, log colour "
                    "scale; circles hold 50% (solid) and 90% (dashed) of the mass.",
                )
            )
    return figures


def _paired_figures(tables: list[PairedTable], out_dir: Path) -> list[Figure]:
    out = []
    for t in tables:
        if len(t.rows) < 2 or t.seeds < 2:
            continue
        name = f"forest_{t.metric}" + (f"_{_slug(t.variant)}" if t.variant else "") + ".png"
        path = forest_plot(t, out_dir / name)
        out.append(
            Figure(
                path,
                "Paired comparison" + (f" ({t.variant})" if t.variant else "") + f", {t.budget}",
                f"Left: {metric_title(t.metric)}, mean and 95% CI over {t.seeds} seeds, mechanisms ranked by "
                "the mean (letters: groups that cannot be told apart, Holm-corrected paired t-tests). Right: "
                f"the per-seed difference to {t.baseline}, mean with its 95% paired-t interval (thick) and "
                "bootstrap interval (thin); the shaded band is ±the smallest difference these seeds detect "
                "with 80% power.",
            )
        )
    return out


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_")[:40]
