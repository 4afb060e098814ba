"""``attn-zoo report STORE``: tables and plots from a results store."""

from __future__ import annotations

import argparse
from pathlib import Path

from attn_zoo.cli._format import table
from attn_zoo.cli.results_cmd import open_store
from attn_zoo.cli.run_cmd import write_plots
from attn_zoo.report.tables import summary_rows


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="tables and plots from a results store")
    p.add_argument("store", help="a .sqlite store written by `attn-zoo run`")
    p.add_argument("--out", default=None, help="directory for plots (default: beside the store)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    frame = store.frame()
    out = Path(args.out) if args.out else Path(args.store).with_suffix("")
    headers, rows = summary_rows(frame) if len(frame) else ([], [])
    print(table(headers, rows, markdown=args.markdown))
    for p in write_plots(frame, out):
        print(f"plot: {p}")
    return 0
