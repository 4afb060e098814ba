"""``attn-zoo run SUITE.toml``: run a grid, resumable, with a progress bar; then tables and plots."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from attn_zoo.cli._args import number, parse_overrides
from attn_zoo.cli._format import note_code_versions, note_problems, print_json, table
from attn_zoo.errors import ConfigError
from attn_zoo.registry import load_plugin_file


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a suite file (resumes where a previous run stopped)")
    p.add_argument("suite", help="suite file (TOML), e.g. suites/quick.toml")
    p.add_argument(
        "--out",
        default="results",
        help="results directory (default: results/); a run writes only here and in the cache directory (--cache-dir)",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="re-run cells that failed, diverged, ran out of memory or timed out"
    )
    p.add_argument(
        "--keep-stale",
        action="store_true",
        help="keep finished cells whose code changed since (default: re-run them; the store then mixes code versions)",
    )
    p.add_argument("--fresh", action="store_true", help="start a new store (the old one is kept as .<time>.bak)")
    p.add_argument(
        "--executor",
        default="local",
        help="where cells run: local, inline, ray, or one a plugin registers (default local; an unknown name is "
        "refused with the list)",
    )
    p.add_argument(
        "--jobs", type=number(1, 1024, integer=True), default=None, help="cells at once (local executor; default 1)"
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster to join (--executor ray; e.g. 10.0.0.1:6379, see docs/scaling.md)"
    )
    p.add_argument(
        "--timeout",
        type=number(0, low_open=True, unit="seconds"),
        default=None,
        help="seconds one cell may run before it is stopped",
    )
    p.add_argument(
        "--memory-limit-mb",
        type=number(64, integer=True, unit="MiB"),
        default=None,
        help="memory cap of each cell's worker (heap; Linux); over it: oom",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="where generated data (Pathfinder) and downloads are cached (default: $ATTN_ZOO_CACHE, else the "
        "user cache directory); the results directory and this are the only places a run writes",
    )
    p.add_argument(
        "--allow-long",
        action="store_true",
        help="run a training budget even when it cannot finish within a year (refused otherwise)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a suite value, e.g. --set train.epochs=1 (TOML value syntax)",
    )
    p.add_argument(
        "--backend",
        default=None,
        metavar="NAME",
        help="force one attention path for every cell (= --set model.backend=NAME; see `attn-zoo list`)",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py",
        help="load mechanisms from this Python file (suite files never load code)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="skip the figures after the run")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def store_path_for(out: Path, name: str) -> Path:
    """``OUT/NAME.sqlite``, refusing anything that would land outside ``OUT``."""
    path = out / f"{name}.sqlite"
    if path.resolve().parent != out.resolve():
        raise ConfigError(f"suite name {name!r} would write outside the results directory {str(out)!r}")
    return path


def run(args: argparse.Namespace) -> int:
    import os

    from attn_zoo.paths import CACHE_ENV, cache_dir
    from attn_zoo.train.run import ALLOW_LONG_ENV

    saved = {name: os.environ.get(name) for name in (CACHE_ENV, ALLOW_LONG_ENV)}
    try:  # the cache directory and --allow-long reach the workers through the environment, for this run only
        os.environ[CACHE_ENV] = str(cache_dir(args.cache_dir))
        if args.allow_long:
            os.environ[ALLOW_LONG_ENV] = "1"
        return _run(args)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run(args: argparse.Namespace) -> int:
    from attn_zoo.grid.executors import create_executor
    from attn_zoo.grid.runner import run_suite, work_root_for
    from attn_zoo.grid.store import SCHEMA_VERSION, Store
    from attn_zoo.grid.suite import load_suite
    from attn_zoo.paths import allow_writes, cache_dir, make_dir, writable
    from attn_zoo.report.tables import NOT_CONVERGED_NOTE, has_unconverged, summary_rows

    for plugin in args.plugin:
        load_plugin_file(plugin)
    overrides = parse_overrides(args.set)
    if args.backend is not None:  # checked with the suite (name, mechanisms' knobs, this machine) before any cell
        overrides["model.backend"] = args.backend
    suite = load_suite(args.suite, overrides, plugins=tuple(args.plugin), allow_long=args.allow_long)
    options = dict(suite.executor)
    if args.jobs is not None:
        options["jobs"] = args.jobs
    if args.address is not None:
        if args.executor in ("local", "inline"):
            raise ConfigError(f"--address names a Ray cluster; it needs --executor ray, not {args.executor!r}")
        options["address"] = args.address
    out = Path(args.out)
    store_path = store_path_for(out, suite.name)
    executor = create_executor(  # checked before anything is written
        args.executor,
        timeout_s=args.timeout,
        memory_limit_mb=args.memory_limit_mb,
        work_root=work_root_for(store_path),
        **options,
    )
    allow_writes(out, cache_dir())  # the one place a run writes, and the cache; every writer checks against these
    make_dir(out)
    writable(store_path)
    if args.fresh and store_path.exists():
        stamp = int(time.time())
        for suffix in ("", "-wal", "-shm"):
            old = Path(f"{store_path}{suffix}")
            if old.exists():
                old.replace(Path(f"{store_path.with_suffix(f'.{stamp}.bak')}{suffix}"))
    print(f"suite {suite.name}: {len(suite.cells)} cells -> {store_path}", file=sys.stderr)
    command = "attn-zoo " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_suite(
        suite,
        store_path,
        executor=executor,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        command=command,
        keep_stale=args.keep_stale,
    )
    if summary.migrated_from is not None:
        print(f"store {store_path}: migrated from schema {summary.migrated_from} to {SCHEMA_VERSION}", file=sys.stderr)
    store = Store(store_path)
    frame = store.frame(samples=True)
    note_problems(store)
    figures = [] if args.no_plots else make_figure_files(frame, out / suite.name, store_path.parent)
    code = 0 if summary.failed == 0 else 1  # cells another runner still runs are that runner's to report
    if args.json:
        print_json({**summary.to_dict(), "plots": [str(f.path) for f in figures]})
        return code
    if len(frame):
        note_code_versions(frame)
        headers, rows = summary_rows(frame)
        print(table(headers, rows))
        if has_unconverged(rows):
            print(NOT_CONVERGED_NOTE)
    elsewhere = (
        f"; {summary.elsewhere} still running in another runner, which records them (`attn-zoo results` shows them)"
        if summary.elsewhere
        else ""
    )
    print(
        f"\n{summary.ran} ran, {summary.skipped} already done, {summary.progress_note()}{elsewhere}; "
        f"store {store_path}",
        file=sys.stderr,
    )
    if summary.failed:
        print("re-run failed cells with --retry-failed; see `attn-zoo results STORE --status failed`", file=sys.stderr)
    for fig in figures:
        print(f"plot: {fig.path}", file=sys.stderr)
    return code


def make_figure_files(frame, out_dir: Path, store_dir: Path):
    from attn_zoo.report.figures import make_figures

    return make_figures(frame, out_dir, store_dir)


def write_plots(frame, out_dir: Path) -> list[Path]:
    """Kept for callers of the first release: the figures' paths."""
    return [f.path for f in make_figure_files(frame, out_dir, out_dir.parent)]
