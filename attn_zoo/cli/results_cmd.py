"""``attn-zoo results STORE``: list and query stored rows; export CSV or Parquet."""

from __future__ import annotations

import argparse
import operator
import re
from pathlib import Path
from typing import TYPE_CHECKING

from attn_zoo.cli._format import note_code_versions, note_problems, print_json, table
from attn_zoo.errors import ConfigError
from attn_zoo.grid.store import STATUSES, Store, export_frame

if TYPE_CHECKING:  # pandas and the report tables load inside the commands, so that --help answers at once
    import pandas as pd
_OPS = {
    "==": operator.eq,
    "=": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def add_parser(sub) -> None:
    p = sub.add_parser("results", help="list, filter and export the rows of a results store")
    p.add_argument("store", help="a .sqlite store written by `attn-zoo run` (or a directory holding one)")
    p.add_argument("--status", default="all", choices=("all", *STATUSES), help="only cells with this status")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN<op>VALUE",
        help="filter rows, e.g. --where label=swin --where img_size>=64 (ops: = != < <= > >=); repeat to AND",
    )
    p.add_argument("--columns", default=None, help="comma-separated columns to show (default: a short summary)")
    p.add_argument("--aggregates", action="store_true", help="one row per configuration: mean, std, 95%% CI over seeds")
    p.add_argument("--csv", default=None, metavar="FILE", help="write the rows to this CSV file")
    p.add_argument("--parquet", default=None, metavar="FILE", help="write the rows to this Parquet file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def find_store(path: str) -> Path:
    """A store file, or the only ``.sqlite`` file in a directory."""
    p = Path(path)
    if p.is_dir():
        stores = sorted(p.glob("*.sqlite"))
        if len(stores) == 1:
            return stores[0]
        found = ", ".join(s.name for s in stores) or "none"
        raise ConfigError(f"results directory {path!r} holds {len(stores)} stores ({found}); name one")
    if not p.is_file():
        raise ConfigError(f"results store {path!r} does not exist (run a suite first: attn-zoo run SUITE)")
    return p


def open_store(path: str, readonly: bool = True) -> Store:
    return Store(find_store(path), readonly=readonly)


def apply_where(frame: pd.DataFrame, clauses: list[str]) -> pd.DataFrame:
    """Filter ``frame`` by ``COLUMN<op>VALUE`` clauses (numbers compare as numbers)."""
    import pandas as pd

    for clause in clauses:
        match = re.fullmatch(r"\s*([^=!<>\s]+)\s*(==|!=|>=|<=|=|>|<)\s*(.*?)\s*", clause)
        if not match:
            raise ConfigError(f"--where {clause!r}: expected COLUMN<op>VALUE with op one of = != < <= > >=")
        column, op, raw = match.groups()
        if column not in frame.columns:
            shown = ", ".join(sorted(frame.columns)[:40])
            raise ConfigError(f"--where {clause!r}: no column {column!r}; columns: {shown}")
        series = frame[column]
        try:
            value = float(raw)
            numeric = pd.to_numeric(series, errors="coerce")
            mask = _OPS[op](numeric, value)
            if op in ("=", "==", "!=") and numeric.isna().all():
                mask = _OPS[op](series.astype(str), raw)
        except ValueError:
            if op not in ("=", "==", "!="):
                raise ConfigError(f"--where {clause!r}: {op} needs a number, got {raw!r}") from None
            mask = _OPS[op](series.astype(str), raw)
        frame = frame[mask.fillna(False).astype(bool)]
    return frame


def run(args: argparse.Namespace) -> int:
    from attn_zoo.report.tables import CELL_COLUMNS, aggregate

    store = open_store(args.store)
    frame = store.frame(status=None if args.status == "all" else args.status)
    note_problems(store)
    note_code_versions(frame[frame["status"] == "ok"] if len(frame) else frame)
    frame = apply_where(frame, args.where)
    if args.aggregates:
        frame = aggregate(frame[frame["status"] == "ok"]) if len(frame) else frame
    if args.columns:
        cols = [c.strip() for c in args.columns.split(",") if c.strip()]
        missing = [c for c in cols if c not in frame.columns]
        if missing and len(frame):
            raise ConfigError(f"--columns: no column {missing[0]!r}; columns: {', '.join(sorted(frame.columns))}")
        frame = frame[[c for c in cols if c in frame.columns]]
    for target in (args.csv, args.parquet):
        if target:
            from attn_zoo.paths import atomic_output

            if Path(target).suffix not in (".csv", ".parquet", ".pq"):
                raise ConfigError(f"export file {target!r}: unknown format; allowed suffixes: .csv, .parquet")
            with atomic_output(target) as tmp:  # the format follows the suffix, which the temporary file keeps
                export_frame(frame, tmp)
    if args.json:
        print_json(frame.to_dict(orient="records"))
        return 0
    print(f"{store.path}: {dict(sorted(store.counts().items()))}; {len(frame)} rows shown")
    if args.aggregates and not args.columns:
        cols = [c for c in frame.columns if c in ("label", "variant", "n") or c.endswith(("_mean", "_ci95"))][:12]
    else:
        cols = list(frame.columns) if args.columns else [c for c in (*CELL_COLUMNS, "reason") if c in frame]
    shown = frame[cols].copy() if len(frame) else frame
    if len(shown) and "reason" in shown:
        shown["reason"] = shown["reason"].map(lambda r: r if not isinstance(r, str) or len(r) < 60 else r[:57] + "...")
    print(table(cols, shown.round(4).values.tolist() if len(shown) else []))
    return 0
