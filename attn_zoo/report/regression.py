"""Regression check: compare a run's store with a baseline store, configuration by configuration.

Configurations are matched by ``config_id`` (the resolved configuration without the seed, independent of the
code version) and averaged over seeds. Latency moved when the relative change passes the threshold AND the
change is larger than the measurement spread, so timer noise does not fail a build. The spread of one run is
the half-width of the median's 95% bootstrap CI when the store has it (``latency_fwd_ci_low_ms`` /
``_high_ms``), else half its interquartile range; the two runs' spreads and their 95% CIs over seeds are
combined in quadrature and the largest of those counts. Accuracy moved when
it changed by more than the threshold in percentage points. A configuration that finished in the baseline
but has no finished seed now is reported as lost.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

from attn_zoo.report.style import accuracy_metric
from attn_zoo.report.tables import aggregate

LATENCY = "latency_median_ms"
CI_LOW, CI_HIGH = "latency_fwd_ci_low_ms", "latency_fwd_ci_high_ms"
IQRS = ("latency_fwd_iqr_ms", "latency_iqr_ms")


@dataclasses.dataclass(frozen=True)
class Change:
    config_id: str
    label: str
    variant: str
    metric: str
    baseline: float | None
    current: float | None
    delta: float | None
    relative: float | None
    noise: float | None
    kind: str  # "regression", "improvement" or "lost"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Comparison:
    changes: list[Change]
    matched: int
    only_baseline: int
    only_current: int
    latency_threshold: float
    accuracy_threshold: float

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.kind in ("regression", "lost")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "only_baseline": self.only_baseline,
            "only_current": self.only_current,
            "latency_threshold": self.latency_threshold,
            "accuracy_threshold": self.accuracy_threshold,
            "changes": [c.to_dict() for c in self.changes],
        }


def compare_frames(
    baseline: pd.DataFrame,
    current: pd.DataFrame,
    latency_threshold: float = 0.10,
    accuracy_threshold: float = 1.0,
) -> Comparison:
    """Changes between two store frames (``Store.frame()``: ok cells) beyond the thresholds."""
    accuracy = accuracy_metric(baseline)  # test_top1, or val_top1 in stores without a test split
    base = _by_config(_with_spread(baseline), [LATENCY, "_spread", accuracy])
    cur = _by_config(_with_spread(current), [LATENCY, "_spread", accuracy])
    changes: list[Change] = []
    shared = [k for k in base if k in cur]
    for key in shared:
        b, c = base[key], cur[key]
        ident = (key, str(b["label"]), str(b.get("variant") or ""))
        bl, cl = b.get(f"{LATENCY}_mean"), c.get(f"{LATENCY}_mean")
        if _num(bl) and _num(cl) and bl > 0:
            delta = cl - bl
            spread = math.hypot(_or0(b.get("_spread_mean")), _or0(c.get("_spread_mean")))
            ci = math.hypot(_or0(b.get(f"{LATENCY}_ci95")), _or0(c.get(f"{LATENCY}_ci95")))
            noise = max(spread, ci)
            if abs(delta) / bl > latency_threshold and abs(delta) > noise:
                kind = "regression" if delta > 0 else "improvement"
                changes.append(Change(*ident, LATENCY, bl, cl, delta, delta / bl, noise, kind))
        ba, ca = b.get(f"{accuracy}_mean"), c.get(f"{accuracy}_mean")
        if _num(ba) and _num(ca) and abs(ca - ba) > accuracy_threshold:
            kind = "regression" if ca < ba else "improvement"
            changes.append(Change(*ident, accuracy, ba, ca, ca - ba, None, None, kind))
    for key in base:
        if key not in cur:
            b = base[key]
            changes.append(
                Change(
                    key, str(b["label"]), str(b.get("variant") or ""), "status", None, None, None, None, None, "lost"
                )
            )
    return Comparison(
        changes,
        matched=len(shared),
        only_baseline=sum(k not in cur for k in base),
        only_current=sum(k not in base for k in cur),
        latency_threshold=latency_threshold,
        accuracy_threshold=accuracy_threshold,
    )


def _with_spread(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``_spread``: one run's latency uncertainty (CI half-width of the median, else half the IQR)."""
    if not len(frame):
        return frame
    frame = frame.copy()
    spread = pd.Series(float("nan"), index=frame.index)
    for col in IQRS:
        if col in frame:
            spread = spread.fillna(frame[col] / 2)
    if CI_LOW in frame and CI_HIGH in frame:
        spread = ((frame[CI_HIGH] - frame[CI_LOW]) / 2).fillna(spread)
    frame["_spread"] = spread
    return frame


def _by_config(frame: pd.DataFrame, metrics: list[str]) -> dict[str, dict[str, Any]]:
    if not len(frame):
        return {}
    agg = aggregate(frame, [m for m in metrics if m in frame])
    return {row["config_id"]: row.to_dict() for _, row in agg.iterrows()}


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _or0(value: Any) -> float:
    return float(value) if _num(value) else 0.0
