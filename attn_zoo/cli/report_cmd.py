"""``attn-zoo report RESULTS [--html]``: tables, plots and a static HTML page from a results store."""

from __future__ import annotations

import argparse
from pathlib import Path

from attn_zoo.cli._format import note_code_versions, note_problems, print_json, table


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="tables, plots and an HTML page from a results store")
    p.add_argument("store", help="a .sqlite store written by `attn-zoo run` (or a directory holding one)")
    p.add_argument("--out", default=None, help="directory for plots and the page (default: beside the store)")
    p.add_argument("--html", action="store_true", help="also write one self-contained HTML page (report.html)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", action="store_true", help="print the written files as JSON")
    p.add_argument(
        "--baseline",
        default=None,
        help="mechanism the paired differences are taken to (default: the suite's "
        "[report] baseline, else the first mechanism)",
    )
    p.add_argument(
        "--seeds-for",
        type=float,
        default=None,
        metavar="POINTS",
        help="estimate from the store's seed spread how many paired seeds a difference of POINTS needs",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attn_zoo.cli.results_cmd import find_store
    from attn_zoo.grid.store import Store
    from attn_zoo.report.figures import make_figures
    from attn_zoo.report.plots import resolution_columns
    from attn_zoo.report.style import accuracy_metric
    from attn_zoo.report.tables import NOT_CONVERGED_NOTE, has_unconverged, summary_rows

    path = find_store(args.store)
    store = Store(path, readonly=True)  # a report reads only: it never writes to or creates a store
    frame = store.frame(samples=True)
    note_problems(store)
    note_code_versions(frame)
    from attn_zoo.paths import allow_writes, make_dir

    out = Path(args.out) if args.out else path.with_suffix("")
    from attn_zoo.report.paired_report import paired_section, suite_baseline

    baseline = args.baseline or suite_baseline(store)
    paired = paired_section(frame, path.parent, baseline, args.seeds_for)  # checks --baseline first
    allow_writes(out)  # the report writes only here
    make_dir(out)
    figures = make_figures(frame, out, path.parent, baseline=baseline)
    page = None
    if args.html:
        from attn_zoo.report.html import write_html_report

        page = write_html_report(store, out / "report.html", figures, baseline=baseline)
    if args.json:
        print_json({"store": str(path), "plots": [str(f.path) for f in figures], "html": str(page) if page else None})
        return 0
    headers, rows = summary_rows(frame) if len(frame) else (["mechanism"], [])
    print(table(headers, rows, markdown=args.markdown))
    if has_unconverged(rows):
        print(NOT_CONVERGED_NOTE)
    by_resolution = resolution_columns(frame, accuracy_metric(frame)) if len(frame) else {}
    if len(by_resolution) > 1:  # the accuracy-vs-resolution numbers behind the curve
        columns = [(col, f"top-1 @{res}px", 1, "{:.2f}") for res, col in by_resolution.items()]
        headers, rows = summary_rows(frame, columns)
        print(f"\n{accuracy_metric(frame)} at evaluation resolutions (models unchanged):")
        print(table(headers, rows, markdown=args.markdown))
    if paired:
        print("\n" + paired.text(markdown=args.markdown))
    for fig in figures:
        print(f"plot: {fig.path}")
    if page:
        print(f"html: {page}")
    return 0
