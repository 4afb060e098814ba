"""The ``attn-zoo`` command. One module per subcommand, each with ``add_parser`` and ``run``.

User errors (bad names, bad suite files, bad arguments) print one line naming what is wrong and what is
allowed, and exit with status 2; no traceback. ``--plugin FILE`` (before or after the command name) loads
a local file of mechanisms first.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from attn_zoo.errors import AttnZooError, ConfigError
from attn_zoo.registry import PLUGINS_ENV

COMMANDS = ("list", "count", "run", "results", "report", "compare", "bench", "new", "check", "verify")
# commands that build mechanisms also take `--plugin FILE` after their name (`attn-zoo --plugin FILE CMD` works for all)
PLUGIN_COMMANDS = ("list", "count", "run", "bench", "check")
_PLUGIN_HELP = "a .py file registering mechanisms (@register_mechanism); repeatable; workers of `run` load it too"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage dump is noise; keep the one line
        self.exit(2, f"attn-zoo: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attn-zoo", description="Benchmark vision-transformer attention mechanisms.")
    # its own dest: argparse lets a subcommand's defaults overwrite the main parser's values of the same dest
    parser.add_argument(
        "--plugin", dest="global_plugins", action="append", default=[], metavar="FILE", help=_PLUGIN_HELP
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"attn_zoo.cli.{name}_cmd")
        module.add_parser(sub)
    for name in PLUGIN_COMMANDS:
        if "--plugin" in sub.choices[name]._option_string_actions:
            continue  # the command declares its own (`run`); main() hands it the global ones too
        sub.choices[name].add_argument(
            "--plugin", dest="command_plugins", action="append", default=[], metavar="FILE", help=_PLUGIN_HELP
        )
    return parser


def load_plugins(files: list[str]) -> None:
    """Load every plugin file named on the command line; one error naming each file that failed."""
    from attn_zoo.registry import load_plugin_file

    errors = []
    for file in files:
        try:
            load_plugin_file(file)
        except AttnZooError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("; ".join(errors))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if isinstance(getattr(args, "plugin", None), list):  # a command with its own --plugin sees the global ones
        args.plugin = [*args.global_plugins, *args.plugin]
    # plugin files reach this command's worker processes through the environment, for this command only
    exported = os.environ.get(PLUGINS_ENV)
    from attn_zoo.errors import Terminated
    from attn_zoo.paths import restore_roots

    previous = _on_sigterm()
    try:
        with restore_roots():  # the directories a command may write are its own
            load_plugins([*args.global_plugins, *getattr(args, "command_plugins", [])])
            return int(args.func(args) or 0)
    except AttnZooError as exc:
        print(f"attn-zoo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Slurm, Kubernetes, Ray before they kill)
        what, code = ("terminated (SIGTERM)", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(
            f"attn-zoo: {what}; finished cells are in the store, the interrupted ones resume with `attn-zoo run`",
            file=sys.stderr,
        )
        return code
    finally:
        _restore_sigterm(previous)
        if exported is None:
            os.environ.pop(PLUGINS_ENV, None)
        else:
            os.environ[PLUGINS_ENV] = exported


def _on_sigterm():
    """SIGTERM raises :class:`~attn_zoo.errors.Terminated` (a KeyboardInterrupt): the run stops as on Ctrl-C."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        from attn_zoo.errors import Terminated

        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
