"""One look for every figure: paper-sized, colour-blind-safe colours fixed per mechanism, axis labels with
units, and the numbers scaled to readable units (M, G) from the data."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency, and in greyscale by marker
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# the zoo's mechanisms keep their colour and marker in every figure, whatever else a suite contains
KNOWN = ("global", "swin", "ssa", "iwsa", "msda", "gcvit", "msa_conv")
# anything else (plugins) by a hash of its name: the same in every figure and report, whatever else is shown;
# Paul Tol's "muted" scheme (colour-blind safe) and markers no built-in uses
PLUGIN_PALETTE = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499")
PLUGIN_MARKERS = ("*", "h", "p", "<", ">", "d", "H", "8")

RC = {
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.4,
    "lines.markersize": 6,
    "errorbar.capsize": 2.5,
}

# metric -> (quantity, unit, kind): kind "count" is scaled to K/M/G, "plain" keeps its unit
_METRICS = {
    "macs": ("MACs per image", "", "count"),
    "flops": ("FLOPs per image", "", "count"),
    "attention_macs": ("attention MACs per image", "", "count"),
    "params": ("parameters", "", "count"),
    "latency_median_ms": ("latency", "ms", "plain"),
    "latency_fwd_median_ms": ("latency, forward", "ms", "plain"),
    "latency_fwdbwd_median_ms": ("latency, forward + backward", "ms", "plain"),
    "latency_train_median_ms": ("latency, training step", "ms", "plain"),
    "throughput_train_img_s": ("training throughput", "images/s", "plain"),
    "peak_mem_fwd_mb": ("peak memory, forward", "MB", "plain"),
    "peak_mem_train_mb": ("peak memory, training step", "MB", "plain"),
    "act_mem_fwd_mb": ("activation memory, forward", "MB", "plain"),
    "weights_mb": ("weights", "MB", "plain"),
    "tokens": ("tokens, first stage", "", "count"),
    "latency_p95_ms": ("latency, 95th percentile", "ms", "plain"),
    "latency_min_ms": ("latency, minimum", "ms", "plain"),
    "throughput_img_s": ("throughput", "images/s", "plain"),
    "test_top1": ("top-1 accuracy (test)", "%", "plain"),
    "val_top1": ("top-1 accuracy (validation)", "%", "plain"),
    "test_loss": ("test loss", "nats", "plain"),
    "val_loss": ("validation loss", "nats", "plain"),
    "train_loss": ("training loss", "nats", "plain"),
    "train_time_s": ("training time", "s", "plain"),
    "cell_wall_s": ("cell wall time", "s", "plain"),
    "erf_r50": ("ERF radius holding 50% of the mass", "px", "plain"),
    "erf_r90": ("ERF radius holding 90% of the mass", "px", "plain"),
    "img_size": ("input resolution", "px", "plain"),
}
_PREFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "K"))


def is_memory_metric(name: str) -> bool:
    return "mem" in name and name.endswith(("_mb", "_bytes", "_gb"))


def metric_axis(name: str, values: Iterable[float] = ()) -> tuple[str, float]:
    """``(axis label with unit, scale)`` for a metric; counts get K/M/G chosen from ``values``."""
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if is_memory_metric(name) and name not in _METRICS:
        unit = {"_mb": "MB", "_gb": "GB", "_bytes": "bytes"}[
            next(s for s in ("_mb", "_gb", "_bytes") if name.endswith(s))
        ]
        if unit == "bytes" and len(vals) and np.nanmax(np.abs(vals)) >= 1e6:
            return "peak memory (MB)", 1e-6
        return f"peak memory ({unit})", 1.0
    quantity, unit, kind = _METRICS.get(name, (name.replace("_", " "), "", "plain"))
    if kind == "count":
        top = float(np.nanmax(np.abs(vals))) if len(vals) else 0.0
        for factor, prefix in _PREFIXES:
            if top >= factor:
                return f"{quantity} ({prefix})", 1.0 / factor
        return quantity, 1.0
    return (f"{quantity} ({unit})" if unit else quantity), 1.0


def metric_title(name: str) -> str:
    label = metric_axis(name)[0]
    return re.sub(r" \(.*\)$", "", label)


def _digest(label: str) -> int:
    # hashlib, not hash(): Python salts str hashes per process
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "big")


def style_of(label: str) -> tuple[str, str]:
    """``(colour, marker)`` of a mechanism: fixed for the zoo's own, from a hash of the name for any other."""
    if label in KNOWN:
        i = KNOWN.index(label)
        return PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]
    h = _digest(label)
    return PLUGIN_PALETTE[h % len(PLUGIN_PALETTE)], PLUGIN_MARKERS[(h // len(PLUGIN_PALETTE)) % len(PLUGIN_MARKERS)]


def colors_for(labels: Sequence[str]) -> dict[str, str]:
    """Each label's colour (:func:`style_of`): it does not depend on what else is in the figure."""
    return {label: style_of(label)[0] for label in labels}


def markers_for(labels: Sequence[str]) -> dict[str, str]:
    """Each label's marker (:func:`style_of`): it does not depend on what else is in the figure."""
    return {label: style_of(label)[1] for label in labels}


def _order(label: str) -> tuple[int, str]:
    return (KNOWN.index(label) if label in KNOWN else len(KNOWN), label)


def ordered(labels: Iterable[str]) -> list[str]:
    """The zoo's mechanisms in their usual order, then anything else alphabetically."""
    return sorted(set(labels), key=_order)


@contextlib.contextmanager
def figure(width: float = 4.8, height: float = 3.4, ncols: int = 1, nrows: int = 1, **kw) -> Iterator:
    """A styled figure (``fig, ax``); closed when the block ends."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(nrows, ncols, figsize=(width, height), **kw)
        try:
            yield fig, ax
        finally:
            plt.close(fig)


def save(fig, path) -> None:
    """Write ``fig`` atomically (a full disk leaves no truncated file; any OSError is one line naming ``path``)."""
    from pathlib import Path

    from attn_zoo.paths import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp, plt.rc_context(RC):
        fig.savefig(tmp, metadata={"Software": "attn_zoo"}, format=path.suffix.lstrip(".") or "png")


# The reported accuracy: the test split's top-1 (what training records); ``val_top1`` for stores that have
# only a validation split (held out from the training data).
ACCURACY_METRICS = ("test_top1", "val_top1")


def accuracy_metric(frame) -> str:
    """The accuracy column a store frame reports: ``test_top1`` when present, else ``val_top1``."""
    for name in ACCURACY_METRICS:
        if name in frame and frame[name].notna().any():
            return name
    return ACCURACY_METRICS[-1]
