"""Effective receptive fields side by side: one panel per mechanism, on one colour scale.

A map is a 2-D array (``.npy``) of gradient magnitudes at the input for the centre output (the measurement
package writes it as a cell artifact named ``erf...``, with metrics ``erf_r50`` / ``erf_r90``: the radii, in
input pixels, of the smallest centred discs holding 50% and 90% of the mass). Each map is normalised to its
maximum and shown on a logarithmic colour scale, the way Luo et al. (2016) and RepLKNet show ERFs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.patches import Circle

from attn_zoo.report.style import figure, save


def artifact_columns(frame) -> list[str]:
    """The ERF artifact columns of a store frame, e.g. ``artifact.erf_untrained``, ``artifact.erf_trained``."""
    return [c for c in frame.columns if c.startswith("artifact.erf")]


def _radius_prefix(frame, artifact: str) -> str:
    """``erf_trained`` maps go with ``erf_trained_r50``; the untrained (or plain ``erf``) map with ``erf_r50``."""
    return artifact if f"{artifact}_r50" in frame.columns else "erf"


def load_maps(frame, store_dir: str | Path, column: str) -> list[tuple[str, np.ndarray, dict]]:
    """``(title, map, radii)`` per configuration (its first seed with a readable map in ``column``)."""
    store_dir = Path(store_dir).resolve()
    prefix = _radius_prefix(frame, column.removeprefix("artifact."))
    out, seen = [], set()
    for _, row in frame.iterrows():
        key = row.get("config_id", row["label"])
        if key in seen or not isinstance(row.get(column), str):
            continue
        path = (store_dir / row[column]).resolve()
        if not path.is_relative_to(store_dir) or not path.is_file():
            continue
        try:
            erf = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            continue
        if erf.ndim != 2:
            continue
        seen.add(key)
        title = str(row["label"]) + (f"\n({row['variant']})" if row.get("variant") else "")
        radii = {}
        for level in ("r50", "r90"):
            value = row.get(f"{prefix}_{level}")
            if isinstance(value, (int, float)) and np.isfinite(value):
                radii[f"erf_{level}"] = float(value)
        out.append((title, erf, radii))
    return out


def erf_plot(
    maps: Sequence[tuple[str, np.ndarray, Mapping[str, float]]], path: str | Path, title: str | None = None
) -> Path:
    """Panels of normalised ERF maps with the r50 / r90 circles, sharing one logarithmic colour bar."""
    path = Path(path)
    n = len(maps)
    cols = min(n, 4)
    rows = -(-n // cols)
    size = (2.3 * cols + 0.9, 2.45 * rows + 0.6)
    with figure(*size, ncols=cols, nrows=rows, squeeze=False, layout="constrained") as (fig, axes):
        image = None
        norm = LogNorm(vmin=1e-3, vmax=1.0)
        for k, ax in enumerate(axes.flat):
            ax.grid(False)
            if k >= n:
                ax.axis("off")
                continue
            name, erf, radii = maps[k]
            erf = np.abs(np.asarray(erf, dtype=float))
            erf = erf / erf.max() if erf.max() > 0 else erf
            h, w = erf.shape
            extent = (-w / 2, w / 2, h / 2, -h / 2)
            image = ax.imshow(np.clip(erf, 1e-3, 1.0), cmap="magma", norm=norm, extent=extent, interpolation="nearest")
            for key, style in (("erf_r50", "-"), ("erf_r90", "--")):
                if key in radii:
                    ax.add_patch(Circle((0, 0), radii[key], fill=False, ec="#56B4E9", ls=style, lw=1.1))
            ax.set_title(name, fontsize=8.5)
            if k + cols >= n:  # the lowest panel of its column
                ax.set_xlabel("x offset (px)", fontsize=7)
            if k % cols == 0:
                ax.set_ylabel("y offset (px)", fontsize=7)
            ax.tick_params(labelsize=6.5)
            for spine in ax.spines.values():
                spine.set_visible(True)
        if image is not None:
            bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9, aspect=30)
            bar.set_label("gradient magnitude / max (log)")
        fig.suptitle(title or "Effective receptive fields", fontsize=10, fontweight="bold")
        save(fig, path)
    return path
