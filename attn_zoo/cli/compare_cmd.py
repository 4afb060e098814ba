"""``attn-zoo compare BASELINE CURRENT``: regression check between two stores (exit 1 when something moved)."""

from __future__ import annotations

import argparse

from attn_zoo.cli._args import number
from attn_zoo.cli._format import note_code_versions, note_problems, print_json, table
from attn_zoo.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare a store with a baseline store; exit 1 when latency or accuracy moved")
    p.add_argument("baseline", help="the baseline .sqlite store")
    p.add_argument("current", help="the .sqlite store to check")
    p.add_argument(
        "--latency-threshold",
        type=number(0, 100),
        default=0.10,
        help="relative latency change that counts (default 0.10 = 10%%), beyond the measured spread",
    )
    p.add_argument(
        "--accuracy-threshold",
        type=number(0, 100, unit="points"),
        default=1.0,
        help="accuracy change in points that counts (default 1.0)",
    )
    p.add_argument(
        "--fail-on",
        default="any",
        choices=("any", "regression"),
        help="exit 1 on any move beyond the thresholds (default) or only on regressions",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attn_zoo.cli.results_cmd import open_store
    from attn_zoo.report.regression import compare_frames

    if args.latency_threshold < 0 or args.accuracy_threshold < 0:
        raise ConfigError("--latency-threshold and --accuracy-threshold must be >= 0")
    base, cur = open_store(args.baseline), open_store(args.current)
    frames = []
    for store in (base, cur):
        frames.append(store.frame(samples=True))
        note_problems(store)
        note_code_versions(frames[-1])
    result = compare_frames(*frames, args.latency_threshold, args.accuracy_threshold)
    failing = result.changes if args.fail_on == "any" else result.regressions
    code = 1 if failing else 0
    if args.json:
        print_json({**result.to_dict(), "exit_code": code})
        return code
    print(
        f"{result.matched} configurations compared; {result.only_baseline} only in the baseline, "
        f"{result.only_current} only in the current store"
    )
    if not result.changes:
        print(
            f"nothing moved beyond {args.latency_threshold:.0%} latency / {args.accuracy_threshold:g} points accuracy"
        )
        return code
    rows = []
    for c in result.changes:
        if c.metric == "status":
            rows.append([c.label, c.variant, "-", "ok", "no finished seed", "-", c.kind])
            continue
        rel = f"{c.relative:+.1%}" if c.relative is not None else f"{c.delta:+.2f} pt"
        rows.append([c.label, c.variant, c.metric, f"{c.baseline:.4g}", f"{c.current:.4g}", rel, c.kind])
    print(table(["mechanism", "variant", "metric", "baseline", "current", "change", "kind"], rows))
    return code
