"""The ``attn-zoo`` command. One module per subcommand, each with ``add_parser`` and ``run``.

User errors (bad names, bad suite files, bad arguments) print one line naming what is wrong and what is
allowed, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from attn_zoo.errors import AttnZooError

COMMANDS = ("list", "count", "run", "results", "report", "compare")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage dump is noise; keep the one line
        self.exit(2, f"attn-zoo: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attn-zoo", description="Benchmark vision-transformer attention mechanisms.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"attn_zoo.cli.{name}_cmd")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AttnZooError as exc:
        print(f"attn-zoo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attn-zoo: interrupted; finished cells are in the store, `attn-zoo run` resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
