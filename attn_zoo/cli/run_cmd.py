"""``attn-zoo run SUITE.toml``: run a grid, resumable, with a progress bar; then tables and plots."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from attn_zoo.cli._format import print_json, table
from attn_zoo.errors import ConfigError
from attn_zoo.grid.runner import run_suite
from attn_zoo.grid.store import Store
from attn_zoo.grid.suite import load_suite
from attn_zoo.report.plots import pareto_plot
from attn_zoo.report.tables import summary_rows


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a suite file (resumes where a previous run stopped)")
    p.add_argument("suite", help="suite file (TOML), e.g. suites/quick.toml")
    p.add_argument("--out", default="results", help="results directory (default: results/)")
    p.add_argument(
        "--retry-failed", action="store_true", help="re-run cells that failed, diverged or ran out of memory"
    )
    p.add_argument("--fresh", action="store_true", help="start a new store (the old one is kept as .bak)")
    p.add_argument("--executor", default="local", choices=["local"], help="where cells run")
    p.add_argument("--timeout", type=float, default=None, help="seconds one cell may run before it is stopped")
    p.add_argument("--memory-limit-mb", type=int, default=None, help="address-space cap of each cell's worker")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a suite value, e.g. --set train.epochs=1 (TOML value syntax)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict:
    import tomllib

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=1")
        try:
            overrides[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key] = value  # a bare word is a string
    return overrides


def run(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite, parse_overrides(args.set))
    out = Path(args.out)
    store_path = out / f"{suite.name}.sqlite"
    if args.fresh and store_path.exists():
        store_path.replace(store_path.with_suffix(f".{int(time.time())}.bak"))
    print(f"suite {suite.name}: {len(suite.cells)} cells -> {store_path}", file=sys.stderr)
    command = "attn-zoo " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_suite(
        suite,
        store_path,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        command=command,
        timeout_s=args.timeout,
        memory_limit_mb=args.memory_limit_mb,
    )
    frame = Store(store_path).frame()
    plots = write_plots(frame, out / suite.name)
    if args.json:
        print_json({**summary.__dict__, "store": str(summary.store), "plots": [str(p) for p in plots]})
        return 0 if summary.failed == 0 else 1
    if len(frame):
        headers, rows = summary_rows(frame)
        print(table(headers, rows))
    print(
        f"\n{summary.ran} ran, {summary.skipped} already done, {summary.ok} ok, {summary.failed} failed; "
        f"store {store_path}",
        file=sys.stderr,
    )
    for p in plots:
        print(f"plot: {p}", file=sys.stderr)
    return 0 if summary.failed == 0 else 1


def write_plots(frame, out_dir: Path) -> list[Path]:
    plots = []
    if len(frame) and "macs" in frame and "val_top1" in frame and frame["val_top1"].notna().any():
        plots.append(pareto_plot(frame, "macs", "val_top1", out_dir / "accuracy_vs_macs.png"))
    return plots
