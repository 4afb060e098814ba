"""The table's budget error: "-" for a configuration run without a budget (target 0), not "+0.0%"."""

from __future__ import annotations

import pandas as pd

from attn_zoo.report.tables import summary_rows


def _frame(target: float, error: float) -> pd.DataFrame:
    rows = [
        {"config_id": f"{m}", "label": m, "variant": "", "seed": s, "status": "ok", "macs": 2e7, "val_top1": 50.0}
        | {"budget_target": target if m == "swin" else 2e7, "budget_error": error if m == "swin" else 0.016}
        for m in ("global", "swin")
        for s in (0, 1)
    ]
    return pd.DataFrame(rows)


def test_no_budget_shows_a_dash():
    headers, rows = summary_rows(_frame(0.0, 0.0))
    column = headers.index("budget err")
    assert [r[column] for r in rows] == ["+1.6%", "-"]


def test_a_budget_of_its_own_shows_its_error():
    headers, rows = summary_rows(_frame(2e7, -0.026))
    assert [r[headers.index("budget err")] for r in rows] == ["+1.6%", "-2.6%"]
