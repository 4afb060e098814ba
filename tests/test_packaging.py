"""Every data file the package reads ships in its wheel: each non-Python file git tracks under attn_zoo/ is
matched by a pattern of pyproject.toml's package data (a table left out works from a checkout and breaks in an
installed copy)."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _tracked_data_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "attn_zoo"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p.removeprefix("attn_zoo/") for p in out if not p.endswith(".py")]


def _shipped(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.replace("**/", "")) for p in patterns)


def test_every_data_file_is_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["attn_zoo"]
    files = _tracked_data_files()
    assert "train/compile_table.json" in files and "layers/auto_table.json" in files
    missing = [p for p in files if not _shipped(p, patterns)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_the_check_sees_a_missing_file():
    assert not _shipped("train/compile_table.json", ["py.typed", "layers/auto_table.json"])
    assert _shipped("templates/mechanism/README.md.tmpl", ["templates/**/*"])
