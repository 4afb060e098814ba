"""Fitted resolution-scaling exponents of a results store, printed as a table (or JSON / CSV).

``python -m attn_zoo.cli.scaling STORE.sqlite [--by label] [--metrics M ...] [--json] [--csv OUT]``; the fits
are :func:`attn_zoo.measure.scaling.fit_exponents` (columns documented in docs/measurement.md).
"""

from __future__ import annotations

import argparse
import json
import sys

from attn_zoo.cli._format import table
from attn_zoo.grid.store import Store
from attn_zoo.measure.scaling import DEFAULT_METRICS, exponent_table, fit_exponents
from attn_zoo.paths import atomic_output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn_zoo.cli.scaling", description=__doc__.split("\n")[0])
    parser.add_argument("store", help="a results store (.sqlite)")
    parser.add_argument("--by", default="label", help="group column (default: label)")
    parser.add_argument("--metrics", nargs="*", default=None, help=f"default: {' '.join(DEFAULT_METRICS)}")
    parser.add_argument("--json", action="store_true", help="print the fits as JSON records")
    parser.add_argument("--csv", default=None, help="also write the fits to this CSV file")
    args = parser.parse_args(argv)
    fits = fit_exponents(Store(args.store, readonly=True).frame(), args.metrics, by=args.by)  # reading only
    if args.csv:
        with atomic_output(args.csv) as tmp:
            fits.to_csv(tmp, index=False)
    if args.json:
        print(json.dumps(fits.to_dict(orient="records"), indent=2))
    else:
        wide = exponent_table(fits, args.by)
        print(table(list(wide.columns), wide.values.tolist(), markdown=True) if len(wide) else "no fits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
