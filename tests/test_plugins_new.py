"""`attn-zoo new NAME`: the scaffold installs with pip, shows in `attn-zoo list`, and passes its own tests and
`attn-zoo check NAME`, with no edit of this repository."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from attn_zoo.cli import main
from attn_zoo.cli.new_cmd import names, scaffold
from attn_zoo.errors import ConfigError
from attn_zoo.testing import CHECKS

ROOT = Path(__file__).resolve().parent.parent


def _offline_build_ok() -> bool:
    """Whether this interpreter can build a wheel without build isolation (setuptools >= 70.1 or wheel)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    version = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def test_names():
    assert names("my_attn") == {
        "name": "my_attn",
        "project": "attn-zoo-my-attn",
        "package": "attn_zoo_my_attn",
        "Class": "MyAttnAttention",
    }
    assert names("focal_attention")["Class"] == "FocalAttention"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("MyAttn", "must be lower_snake_case"),
        ("my-attn", "must be lower_snake_case"),
        ("swin", "mechanism 'swin' already exists (built-in); pick another name"),
    ],
)
def test_bad_names(tmp_path, name, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        scaffold(name, tmp_path)


def test_refuses_to_overwrite(tmp_path, capsys):
    scaffold("mine", tmp_path)
    assert main(["new", "mine", "--dir", str(tmp_path)]) == 2
    assert "attn-zoo-mine exists and is not empty" in capsys.readouterr().err
    assert main(["new", "mine", "--dir", str(tmp_path), "--force"]) == 0


@pytest.mark.slow
def test_scaffold_installs_lists_and_passes_the_kit(tmp_path, capsys):
    assert main(["new", "my_attn", "--dir", str(tmp_path)]) == 0
    assert 'pip install -e ".[test]"' in capsys.readouterr().out
    project = tmp_path / "attn-zoo-my-attn"
    files = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "attn_zoo_my_attn/__init__.py",
        "attn_zoo_my_attn/mechanism.py",
        "compare.toml",
        "pyproject.toml",
        "tests/test_my_attn.py",
    ]
    assert 'my_attn = "attn_zoo_my_attn.mechanism:MyAttnAttention"' in (project / "pyproject.toml").read_text()

    site = tmp_path / "site"  # a throwaway install target: the package as pip installs it, nothing else
    isolation = ["--no-build-isolation", "--no-index"] if _offline_build_ok() else []
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", *isolation]
        + ["--target", str(site), str(project)],
        check=True,
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    env.pop("ATTN_ZOO_PLUGINS", None)

    def attn_zoo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "attn_zoo", *args], env=env, cwd=tmp_path, capture_output=True, text=True
        )

    listed = attn_zoo("list", "--json")
    assert listed.returncode == 0, listed.stderr
    info = json.loads(listed.stdout)
    mech = info["mechanisms"]["my_attn"]
    assert mech["source"] == "plugin attn-zoo-my-attn 0.1.0" and mech["knobs"]["window"]["default"] == 4
    assert info["plugin_errors"] == {}

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout

    checked = attn_zoo("check", "my_attn")
    assert checked.returncode == 0, checked.stdout
    assert f"{len(CHECKS)} passed, 0 failed, 0 skipped" in checked.stdout
