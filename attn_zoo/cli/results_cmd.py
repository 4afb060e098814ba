"""``attn-zoo results STORE``: list and query stored rows; export CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from attn_zoo.cli._format import print_json, table
from attn_zoo.errors import ConfigError
from attn_zoo.grid.store import STATUSES, Store


def add_parser(sub) -> None:
    p = sub.add_parser("results", help="list the rows of a results store")
    p.add_argument("store", help="a .sqlite store written by `attn-zoo run`")
    p.add_argument("--status", default=None, choices=STATUSES, help="only cells with this status")
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def open_store(path: str) -> Store:
    if not Path(path).is_file():
        raise ConfigError(f"results store {path!r} does not exist (run a suite first: attn-zoo run SUITE)")
    return Store(path)


def run(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    frame = store.frame(status=args.status)
    if args.csv:
        frame.to_csv(args.csv, index=False)
    if args.json:
        print_json(frame.to_dict(orient="records"))
        return 0
    print(f"{args.store}: {store.counts()}")
    cols = [c for c in ("label", "seed", "status", "params", "macs", "latency_median_ms", "val_top1") if c in frame]
    print(table(cols, frame[cols].round(3).values.tolist() if len(frame) else []))
    return 0
