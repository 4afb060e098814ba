"""Which figures a store's rows support, made in one call: what ``attn-zoo run`` and ``report`` draw.

- accuracy vs MACs, vs latency and vs parameters (Pareto fronts), when cells were trained;
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


def make_figures(frame: pd.DataFrame, out_dir: str | Path, store_dir: str | Path | None = None) -> list[Figure]:
    """Draw every figure the ``ok`` rows of ``frame`` support into ``out_dir``; returns them in order."""
    out_dir = Path(out_dir)
    figures: list[Figure] = []
    if not len(frame):
        return figures
    configs = group_key(frame).nunique()
    accuracy = accuracy_metric(frame)  # test_top1, or val_top1 in stores without a test split
    seeds = "Points are configurations: mean over seeds, error bars the 95% confidence interval over seeds."

    if _has(frame, accuracy) and configs > 1:
        for x, name in (("macs", "macs"), (LATENCY, "latency"), ("params", "params")):
            if _has(frame, x):
                path = pareto_plot(frame, x, accuracy, out_dir / f"accuracy_vs_{name}.png")
                figures.append(
                    Figure(
                        path,
                        f"Accuracy vs {metric_title(x)}",
                        f"Top-1 accuracy against {metric_title(x)}; the dashed staircase is the Pareto front "
                        f"(configurations no other beats on both axes, ringed). {seeds}",
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


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_")[:40]
