"""Nothing in a suite file runs as code; plugins load only from installed entry points or --plugin; every
output stays under the chosen results directory (issue 10, item 9)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from _grid_fakes import fake_runner, write_suite

from attn_zoo.cli import main
from attn_zoo.cli.run_cmd import store_path_for
from attn_zoo.errors import ConfigError
from attn_zoo.grid import InlineExecutor, SuiteError, load_suite, register_executor
from attn_zoo.grid.checks import check_output_dir


@register_executor("fake-safe")
def _fake(**_):
    return InlineExecutor(lambda cell, _dir: fake_runner(cell))


def trap(path: Path, marker: Path) -> Path:
    """A Python file that leaves ``marker`` behind if anything ever runs it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    return path


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_code_in_values_is_data_and_nearby_python_files_never_run(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    for name in ("mech.py", "plugin.py", "suite.py", "plugins/x.py", "conftest.py", "attn_zoo_plugin.py"):
        trap(tmp_path / name, marker)
    code = f"__import__('os').system('touch {marker}')"
    suite = write_suite(tmp_path, seeds=1, extra="")
    text = suite.read_text().replace('description = "fake cells for the runner tests"', f"description = {code!r}")
    suite.write_text(text)
    out = tmp_path / "out"
    args = ["run", str(suite), "--out", str(out), "--executor", "fake-safe", "--no-progress", "--no-plots"]
    assert main([*args, "--set", f"model.name={code!r}"]) == 0
    assert not marker.exists()
    db = sqlite3.connect(out / "fake.sqlite")
    assert code in db.execute("SELECT suite_toml FROM runs").fetchone()[0]  # stored verbatim, as text
    db.close()


def test_a_suite_declares_plugins_but_only_the_flag_loads_them(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    plugin = trap(tmp_path / "evil.py", marker)
    suite = write_suite(tmp_path, seeds=1)
    suite.write_text(suite.read_text().replace("[suite]\n", '[suite]\nplugins = ["evil.py"]\n', 1))
    out = tmp_path / "out"
    args = ["run", str(suite), "--out", str(out), "--executor", "fake-safe", "--no-progress", "--no-plots"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "[suite.plugins] needs the plugin file 'evil.py'" in err and "--plugin" in err
    assert not marker.exists() and not out.exists()
    assert main([*args, "--plugin", str(plugin)]) == 0  # the user asked for it by name
    assert marker.read_text() == "ran"


def test_outputs_stay_under_the_results_directory(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    suite = write_suite(tmp_path, seeds=2, extra='"model.img_size" = [32, 64]')
    out = tmp_path / "results"
    before = files_under(tmp_path)
    assert main(["run", str(suite), "--out", str(out), "--executor", "fake-safe", "--no-progress"]) == 0
    assert main(["report", str(out / "fake.sqlite"), "--html"]) == 0
    assert main(["results", str(out / "fake.sqlite"), "--json"]) == 0
    new = files_under(tmp_path) - before
    assert new and all(p.is_relative_to(out) for p in new), sorted(map(str, new - files_under(out)))
    assert (out / "fake" / "report.html").is_file() and not list(work.iterdir())


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "..", "x" * 65, "", "name with space"])
def test_suite_names_that_would_leave_the_results_directory_are_refused(tmp_path, name):
    suite = write_suite(tmp_path)
    with pytest.raises(SuiteError, match=r"\[suite\.name\] .* must be a simple name"):
        load_suite(suite, {"suite.name": name})
    with pytest.raises(ConfigError, match="would write outside the results directory"):
        store_path_for(tmp_path / "out", "../escape")


@pytest.mark.parametrize("value", ["/tmp/elsewhere", "../up", "ok/../../up", "~/home"])
def test_output_directories_in_a_suite_must_stay_relative(tmp_path, value):
    with pytest.raises(SuiteError, match=r"\[train\.checkpoint_dir\] .*relative to the results directory"):
        check_output_dir(tmp_path / "s.toml", "train.checkpoint_dir", value)
    check_output_dir(tmp_path / "s.toml", "train.checkpoint_dir", "checkpoints/run1")  # fine
