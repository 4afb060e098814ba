"""``attn-zoo check NAME``: run the conformance kit (:mod:`attn_zoo.testing`) on one mechanism."""

from __future__ import annotations

import argparse

from attn_zoo.cli._args import number
from attn_zoo.cli._format import parse_knobs


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="run the conformance kit on a mechanism (shape, sizes, gradients, MACs, ...)")
    p.add_argument("name", help="a registered mechanism (see `attn-zoo list`; --plugin FILE loads a local one)")
    p.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a knob value (TOML syntax), e.g. --knob window=4; repeatable",
    )
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="CHECK",
        help="run only this check (shape, sizes, batch, gradients, dependence, determinism, macs, dtypes, "
        "state_dict, harness); repeatable",
    )
    p.add_argument(
        "--dim", type=number(1, integer=True), default=24, help="channels of the standalone checks (default 24)"
    )
    p.add_argument(
        "--heads", type=number(1, integer=True), default=3, help="heads of the standalone checks (default 3)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attn_zoo.testing import check_mechanism

    knobs = parse_knobs(args.knob)
    report = check_mechanism(args.name, checks=args.only, dim=args.dim, num_heads=args.heads, **knobs)
    print(report.to_json() if args.json else report)
    return 0 if report.ok else 1
