"""One line for every bad input (issue 21): numbers on the command line and in suites are finite and in range,
with the range in the message; a training that cannot finish within a year is refused unless insisted on;
mechanism lists of the wrong shape; report directories that cannot be written."""

from __future__ import annotations

import pytest
from _grid_fakes import write_suite

from attn_zoo.cli import main
from attn_zoo.grid import SuiteError, load_suite

NUMBERS = [
    (["run", "S", "--timeout", "-5"], "argument --timeout: got '-5'; allowed: a finite number > 0 (seconds)"),
    (["run", "S", "--timeout", "nan"], "argument --timeout: got 'nan'; allowed: a finite number > 0 (seconds)"),
    (["run", "S", "--timeout", "0"], "argument --timeout: got '0'; allowed: a finite number > 0 (seconds)"),
    (["run", "S", "--jobs", "0"], "argument --jobs: got '0'; allowed: an integer >= 1 and <= 1024"),
    (["run", "S", "--memory-limit-mb", "8"], "argument --memory-limit-mb: got '8'; allowed: an integer >= 64 (MiB)"),
    (
        ["compare", "A", "B", "--latency-threshold", "nan"],
        "argument --latency-threshold: got 'nan'; allowed: a finite number >= 0 and <= 100",
    ),
    (
        ["compare", "A", "B", "--accuracy-threshold", "inf"],
        "argument --accuracy-threshold: got 'inf'; allowed: a finite number >= 0 and <= 100 (points)",
    ),
    (["bench", "global", "--threads", "0"], "argument --threads: got '0'; allowed: an integer >= 1 and <= 4096"),
    (["bench", "global", "--time-cap", "-1"], "argument --time-cap: got '-1'; allowed: a finite number > 0 (seconds)"),
    (["bench", "global", "--batch", "1e3"], "argument --batch: got '1e3'; allowed: an integer >= 1"),
    (["check", "global", "--heads", "0"], "argument --heads: got '0'; allowed: an integer >= 1"),
]


@pytest.mark.parametrize(("argv", "message"), NUMBERS, ids=[" ".join(a[2:]) for a, _ in NUMBERS])
def test_numbers_on_the_command_line_are_checked_with_their_range(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attn-zoo: error: {message} (see `attn-zoo {argv[0]} --help`)") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("steps", "99999999999999999999", "99999999999999999999 means at least 1e+20 steps"),
        ("epochs", "1e18", "1e+18 means at least 1e+18 steps"),
    ],
)
def test_a_training_that_cannot_finish_in_a_year_is_refused_unless_insisted(tmp_path, key, value, shown, capsys):
    extra = f"[train]\n{key} = {value}\nbatch_size = 16\n[data]\nsource = 'synthetic'\n"
    path = write_suite(tmp_path, seeds=1)
    path.write_text(path.read_text().replace("[grid]", extra + "[grid]"))
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    text = str(info.value)
    assert text.startswith(f"{path}: [train.{key}] {shown}") and "\n" not in text
    assert "allowed: at most 3.15e+11 steps (pass --allow-long to insist)" in text
    assert len(load_suite(path, allow_long=True).cells) == 2
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"attn-zoo: error: {path}: [train.{key}]") and not out.exists()


@pytest.mark.parametrize("value", ["[{a = 1}]", '[["global"]]', '["global", {a = 1}]', "[[]]", "[1.5]"])
@pytest.mark.parametrize("how", ["file", "set"])
def test_mechanism_lists_of_tables_or_lists_are_one_line(tmp_path, capsys, value, how):
    path = write_suite(tmp_path, seeds=1, extra='"knobs.window" = [4]')
    if how == "file":
        path.write_text(path.read_text().replace('mechanism = ["global", "swin"]', f"mechanism = {value}"))
        argv = []
    else:
        argv = ["--set", f"grid.mechanism={value}"]
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attn-zoo: error: {path}: [grid.mechanism] unknown mechanism ") and err.count("\n") == 1
    assert not out.exists()


def test_report_out_that_is_a_file_or_cannot_be_created_is_one_line(tmp_path, capsys):
    path = write_suite(tmp_path, seeds=1)
    from _grid_fakes import fake_runner

    from attn_zoo.grid import InlineExecutor, register_executor

    register_executor("fake-inputs")(lambda **_: InlineExecutor(lambda cell, _dir: fake_runner(cell)))
    out = tmp_path / "out"
    argv = ["run", str(path), "--out", str(out), "--executor", "fake-inputs", "--no-progress", "--no-plots"]
    assert main(argv) == 0
    store = str(out / "fake.sqlite")
    capsys.readouterr()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for target, why in (
        (a_file, f"cannot write into {str(a_file)!r}: it is an existing file, not a directory"),
        (a_file / "sub", f"cannot create the directory {str(a_file / 'sub')!r}: Not a directory"),
    ):
        assert main(["report", store, "--out", str(target)]) == 2
        assert capsys.readouterr().err == f"attn-zoo: error: {why}\n"
    assert a_file.read_text() == "x"
    assert main(["run", str(path), "--out", str(a_file), "--no-progress"]) == 2
    assert "it is an existing file, not a directory" in capsys.readouterr().err
