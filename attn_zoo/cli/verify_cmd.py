"""``attn-zoo verify STORE``: check every finished row against the digest stored with it (exit 1 if any fails)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="list the rows of a results store that no longer match their digest")
    p.add_argument("store", help="a .sqlite store written by `attn-zoo run` (or a directory holding one)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attn_zoo.cli._format import print_json
    from attn_zoo.cli.results_cmd import open_store

    store = open_store(args.store)  # read-only: verifying never writes
    checked, bad = store.verify()
    if args.json:
        print_json({"store": str(store.path), "checked": checked, "mismatched": bad})
    else:
        for line in bad:
            print(line)
        verdict = f"{len(bad)} do not match their digest" if bad else "all match their digest"
        print(f"{store.path}: {checked} finished rows checked; {verdict}")
    return 1 if bad else 0
