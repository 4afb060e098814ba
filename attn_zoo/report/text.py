"""Plain-text and Markdown tables (stdlib only: the CLI prints them without loading pandas)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """A fixed-width (or Markdown) table; floats keep what the caller formatted."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    sep = " | " if markdown else "  "
    lines = [sep.join(str(h).ljust(w) for h, w in zip(headers, widths))]
    lines.append(("|".join("-" * (w + 2) for w in widths)) if markdown else sep.join("-" * w for w in widths))
    lines += [sep.join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    if markdown:
        lines = [f"| {line} |" if i != 1 else f"|{line}|" for i, line in enumerate(lines)]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value)
