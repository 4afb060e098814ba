"""Tamper-evident, robust reading: every finished row carries a digest that `attn-zoo verify` checks; a row
edited by hand into something malformed is named by cell and field in one line and left out of aggregates,
by results, report, compare and run alike, never raised."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from _grid_fakes import fake_runner, write_suite

from attn_zoo.cli import main
from attn_zoo.grid import Store, load_suite, run_suite


@pytest.fixture
def made(tmp_path):
    suite_file = write_suite(tmp_path, seeds=2, mechanisms=("global", "swin"))
    suite = load_suite(suite_file)
    path = tmp_path / "out" / "fake.sqlite"
    run_suite(suite, path, runner=fake_runner, progress=False)
    victim = next(c for c in suite.cells if c.label == "swin" and c.seed == 1)
    return suite_file, path, victim.cell_id


def _edit(path, sql, *args):
    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


def test_verify_passes_a_fresh_store_and_lists_edited_rows(made, capsys):
    _, path, victim = made
    assert main(["verify", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith("4 finished rows checked; all match their digest")
    _edit(path, "UPDATE metrics SET value = value + 1 WHERE cell_id = ? AND name = 'val_top1'", victim)
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"cell {victim} (swin seed 1, ok): content does not match its digest"
    assert out[-1].endswith("4 finished rows checked; 1 do not match their digest")
    _edit(path, "UPDATE cells SET digest = NULL WHERE cell_id = ?", victim)
    assert main(["verify", str(path)]) == 1
    assert f"cell {victim} (swin seed 1, ok): no digest" in capsys.readouterr().out


MALFORMED = {
    "spec not JSON": ("UPDATE cells SET spec = '{not json' WHERE cell_id = ?", "field spec: not JSON"),
    "spec a list": ("UPDATE cells SET spec = '[1, 2]' WHERE cell_id = ?", "field spec: a JSON list, not a table"),
    "metric abc": (
        "UPDATE metrics SET value = 'abc' WHERE cell_id = ? AND name = 'val_top1'",
        "metric val_top1 = 'abc': not a finite number",
    ),
    "metric 1e308": (
        "UPDATE metrics SET value = 1e308 WHERE cell_id = ? AND name = 'val_top1'",
        "metric val_top1 = 1e+308: not a finite number",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("command", ["results", "report", "compare", "run"])
def test_a_malformed_row_is_named_and_left_out_never_raised(made, tmp_path, capsys, case, command):
    suite_file, path, victim = made
    clean = tmp_path / "clean.sqlite"
    shutil.copyfile(path, clean)
    sql, field = MALFORMED[case]
    _edit(path, sql, victim)
    capsys.readouterr()
    argv = {
        "results": ["results", str(path), "--aggregates"],
        "report": ["report", str(path), "--out", str(tmp_path / "rep")],
        "compare": ["compare", str(clean), str(path)],
        "run": ["run", str(suite_file), "--out", str(path.parent), "--no-progress", "--no-plots"],
    }[command]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 1) and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if victim in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"attn-zoo: note: cell {victim} (swin seed 1): {field}")
    assert lines[0].endswith("; left out of tables and aggregates")
    if command in ("results", "report"):
        swin = [line for line in out.splitlines() if line.startswith("swin")]
        assert swin and all(" 1 " in f" {line} " for line in swin), out  # one seed left in swin's aggregate


def test_malformed_rows_stay_out_of_the_stored_aggregates(made):
    suite_file, path, victim = made
    _edit(path, *MALFORMED["metric abc"][:1], victim)
    summary = run_suite(load_suite(suite_file), path, runner=fake_runner, progress=False)
    assert summary.ran == 0 and len(summary.problems) == 1 and victim in summary.problems[0]
    agg = Store(path, readonly=True).aggregates()
    assert set(agg.loc[agg["label"] == "swin", "n"]) == {1}
