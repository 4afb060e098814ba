"""The ``attn-zoo`` command. One module per subcommand, each with ``add_parser`` and ``run``.

User errors (bad names, bad suite files, bad arguments) print one line naming what is wrong and what is
allowed, and exit with status 2; no traceback. ``--plugin FILE`` (before or after the command name) loads
a local file of mechanisms first.

Start-up is kept short: only the module of the command being run is imported, and command modules import
torch, timm and the mechanisms inside the functions that need them, so ``attn-zoo --help``, ``attn-zoo CMD
--help`` and argument errors answer without loading them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Iterable, Sequence

from attn_zoo.errors import AttnZooError, ConfigError
from attn_zoo.registry import PluginWarning

# name -> the one-line help `attn-zoo --help` lists, without importing the command's module (each module's
# add_parser passes the same line; tests/test_cli_startup.py keeps the two equal)
COMMANDS = {
    "list": "mechanisms with their knobs and backends, and presets",
    "count": "params, MACs, FLOPs and attention MACs of a preset at one resolution",
    "run": "run a suite file (resumes where a previous run stopped)",
    "results": "list, filter and export the rows of a results store",
    "report": "tables, plots and an HTML page from a results store",
    "compare": "compare a store with a baseline store; exit 1 when latency or accuracy moved",
    "bench": "latency, throughput, memory and MACs of presets or mechanisms",
    "new": "scaffold a new mechanism as an installable plugin package",
    "check": "run the conformance kit on a mechanism (shape, sizes, gradients, MACs, ...)",
    "verify": "list the rows of a results store that no longer match their digest",
}
# commands that build mechanisms also take `--plugin FILE` after their name (`attn-zoo --plugin FILE CMD` works for all)
PLUGIN_COMMANDS = ("list", "count", "run", "bench", "check")
_PLUGIN_HELP = "a .py file registering mechanisms (@register_mechanism); repeatable; workers of `run` load it too"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage dump is noise; keep the one line
        self.exit(2, f"attn-zoo: error: {message} (see `{self.prog} --help`)\n")


def selected_command(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (skipping the global ``--plugin FILE``), or None."""
    args = iter(argv)
    for arg in args:
        if arg == "--plugin":
            next(args, None)
        elif arg in COMMANDS:
            return arg
        elif not arg.startswith("-"):
            return None
    return None


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed; only ``commands`` (default: all) get their arguments, so only
    their modules are imported."""
    full = set(COMMANDS if commands is None else commands)
    parser = _Parser(prog="attn-zoo", description="Benchmark vision-transformer attention mechanisms.")
    # its own dest: argparse lets a subcommand's defaults overwrite the main parser's values of the same dest
    parser.add_argument(
        "--plugin", dest="global_plugins", action="append", default=[], metavar="FILE", help=_PLUGIN_HELP
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_line in COMMANDS.items():
        if name in full:
            importlib.import_module(f"attn_zoo.cli.{name}_cmd").add_parser(sub)
        else:
            sub.add_parser(name, help=help_line)
    for name in PLUGIN_COMMANDS:
        if name not in full or "--plugin" in sub.choices[name]._option_string_actions:
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
    argv = sys.argv[1:] if argv is None else argv
    command = selected_command(argv)
    parser = build_parser([command] if command else [])
    args = parser.parse_args(argv)
    if isinstance(getattr(args, "plugin", None), list):  # a command with its own --plugin sees the global ones
        args.plugin = [*args.global_plugins, *args.plugin]
    from attn_zoo.errors import Terminated
    from attn_zoo.paths import restore_roots

    previous = _on_sigterm()
    error, failed_plugins = "", []
    with warnings.catch_warnings():
        warnings.simplefilter("always", PluginWarning)
        warnings.showwarning = _collecting(failed_plugins, warnings.showwarning)
        try:
            with restore_roots():  # the directories a command may write are its own
                load_plugins([*args.global_plugins, *getattr(args, "command_plugins", [])])
                return int(args.func(args) or 0)
        except AttnZooError as exc:
            error = str(exc)
            print(f"attn-zoo: error: {error}", file=sys.stderr)
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
            # a failed plugin is one line, once, not a Python warning with its source line; none when the error
            # line already says it
            for text in dict.fromkeys(failed_plugins):
                if text not in error:
                    print(f"attn-zoo: warning: {text}", file=sys.stderr)


def _collecting(into: list[str], show):
    """A ``warnings.showwarning`` that keeps PluginWarnings' messages in ``into`` and shows the others."""

    def showwarning(message, category, *args, **kwargs):
        if issubclass(category, PluginWarning):
            into.append(str(message))
        else:
            show(message, category, *args, **kwargs)

    return showwarning


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
