"""The paired comparison as ``attn-zoo report`` prints it and the HTML page shows it (statistics in
:mod:`attn_zoo.report.paired`)."""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from attn_zoo.errors import ConfigError
from attn_zoo.report.paired import PairedTable, paired_tables, summary_text, table_rows
from attn_zoo.report.text import table as render

NOTE = (
    "Rows ranked by mean accuracy; group: mechanisms sharing a letter cannot be told apart (Holm-corrected "
    "paired t-tests over every pair, 5%). Δ: mean over seeds of the per-seed difference to the baseline "
    "(percentage points), with its 95% interval from the paired t and from a bootstrap over seeds; p (Holm): "
    "the paired t-test of that difference, Holm-corrected over the mechanisms; MDD (80%): the smallest true "
    "difference that test detects with 80% power at this row's spread and seeds. Where per-example "
    "predictions are stored: the 95% interval from resampling test examples (test-set noise only) and the "
    "seeds whose exact McNemar test differs at 5%."
)


def suite_baseline(store) -> str | None:
    """``[report] baseline`` of the suite file of the store's last run, if it names a mechanism that has
    finished cells in the store."""
    import tomllib

    runs = store.runs()
    text = (runs[-1].get("suite_toml") if runs else "") or ""
    try:
        value = tomllib.loads(text).get("report", {}).get("baseline")
    except (tomllib.TOMLDecodeError, AttributeError):
        return None
    frame = store.frame()
    present = set(frame["label"].astype(str)) if len(frame) else set()
    return value if isinstance(value, str) and value in present else None


@dataclasses.dataclass
class PairedSection:
    tables: list[PairedTable]
    seeds_for: float | None = None

    def sizing(self, table: PairedTable) -> str:
        if self.seeds_for is None:
            return ""
        if not math.isfinite(table.pooled_sd):
            return (
                f"Sizing: the store has too few paired seeds to estimate how many a {self.seeds_for:g}-point "
                "difference needs."
            )
        n = table.seeds_for(self.seeds_for)
        return (
            f"Sizing: a true difference of {self.seeds_for:g} points needs {n} paired seeds for 80% power "
            f"(two-sided paired t at 5%; spread of the per-seed differences sd = {table.pooled_sd:.2f} points, "
            f"pooled over the {len(table.rows) - 1} comparisons to {table.baseline})."
        )

    def text(self, markdown: bool = False) -> str:
        parts = []
        for t in self.tables:
            title = f"Paired differences in {t.metric}" + (f" ({t.variant})" if t.variant else "") + ":"
            headers, rows = table_rows(t)
            parts += [title, render(headers, rows, markdown=markdown), summary_text(t)]
            if self.seeds_for is not None:
                parts.append(self.sizing(t))
            parts.append("")
        return "\n".join(parts).rstrip()

    def html(self, render_table: Callable) -> str:
        parts = []
        for t in self.tables:
            if t.variant:
                parts.append(f"<h3>{html.escape(t.variant)}</h3>")
            headers, rows = table_rows(t)
            parts.append(render_table(headers, rows, numeric_from=2))
            parts.append(f"<p>{html.escape(summary_text(t))}</p>")
        parts.append(f'<p class="meta">{html.escape(NOTE)}</p>')
        return "\n".join(parts)


def paired_section(
    frame: pd.DataFrame, store_dir: str | Path | None, baseline: str | None, seeds_for: float | None = None
) -> PairedSection | None:
    """The paired tables of a store frame, or None when fewer than two mechanisms have finished."""
    if seeds_for is not None and not (
        isinstance(seeds_for, (int, float)) and math.isfinite(seeds_for) and seeds_for > 0
    ):
        raise ConfigError(f"--seeds-for must be a difference in percentage points > 0, got {seeds_for!r}")
    if not len(frame):
        return None
    labels = list(dict.fromkeys(frame["label"].astype(str)))
    if baseline is not None and baseline not in labels:
        raise ConfigError(f"baseline {baseline!r} is not a mechanism of this store; allowed: {', '.join(labels)}")
    tables = paired_tables(frame, baseline, store_dir=store_dir)
    return PairedSection(tables, seeds_for) if tables else None
