"""The CLI answers --help, CMD --help and argument errors without importing torch, timm or the mechanisms."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from attn_zoo.cli import COMMANDS, build_parser, selected_command

HEAVY = ("torch", "timm", "attn_zoo.mechanisms.swin", "pandas", "matplotlib")


def _imported(code: str) -> dict[str, bool]:
    """Which heavy modules a fresh interpreter has after running ``code``."""
    probe = f"{code}\nimport sys; print([m in sys.modules for m in {HEAVY!r}])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    flags = eval(out.stdout.strip().splitlines()[-1])  # a list of booleans printed by the probe
    return dict(zip(HEAVY, flags))


def test_importing_the_cli_loads_no_torch():
    assert _imported("import attn_zoo.cli") == dict.fromkeys(HEAVY, False)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["count", "--help"],
        ["check", "--help"],
        ["list", "--help"],
        ["new", "--help"],
        ["report", "-h"],
        ["compare", "--help"],
        ["count"],
        ["lst"],
        ["--plugin", "x.py", "check", "--help"],
    ],
)
def test_help_and_argument_errors_load_no_torch(argv):
    code = f"from attn_zoo.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _imported(code) == dict.fromkeys(HEAVY, False)


def test_the_package_api_still_works_lazily():
    code = "import attn_zoo\nassert 'swin' in attn_zoo.list_mechanisms()\nassert callable(attn_zoo.create_model)"
    assert _imported(code)["torch"]


def test_help_lines_match_the_commands():
    """`attn-zoo --help` lists COMMANDS' lines without importing the modules; each module says the same."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == COMMANDS


def test_check_help_names_every_check():
    from attn_zoo.testing import CHECKS

    module = importlib.import_module("attn_zoo.cli.check_cmd")
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers())
    text = parser._subparsers._group_actions[0].choices["check"].format_help()
    assert all(name in " ".join(text.split()) for name in CHECKS)


@pytest.mark.parametrize(
    ("argv", "command"),
    [(["count", "x"], "count"), (["--plugin", "f.py", "list"], "list"), (["--help"], None), (["zzz"], None)],
)
def test_selected_command(argv, command):
    assert selected_command(argv) == command
