"""The store's user side: the DataFrame API, CSV and Parquet export, `attn-zoo results` queries, and opening a
store written by the first release."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest
from _grid_fakes import fake_runner, write_suite

from attn_zoo.cli import main
from attn_zoo.grid import Store, load_suite, run_suite


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    suite = load_suite(write_suite(tmp, seeds=2, extra='"knobs.window" = [2, 4]'))
    broken = suite.cells[0].cell_id

    def run(cell):
        if cell.cell_id == broken:
            raise MemoryError("out of memory in the test")
        return fake_runner(cell)

    run_suite(suite, tmp / "out" / "fake.sqlite", runner=run, progress=False)
    return Store(tmp / "out" / "fake.sqlite")


def test_frame_columns(store):
    frame = store.frame()
    assert len(frame) == 5 and (frame["status"] == "ok").all()
    for column in ("cell_id", "config_id", "label", "mechanism", "variant", "seed", "attempts", "img_size"):
        assert column in frame
    assert {"knob.window", "factor.knobs.window", "params", "macs", "val_top1", "cell_wall_s"} <= set(frame)
    assert set(frame.loc[frame["label"] == "swin", "knob.window"]) == {2, 4}
    everything = store.frame(status=None)
    assert len(everything) == 6 and set(everything["status"]) == {"ok", "oom"}


def test_csv_and_parquet_export(store, tmp_path, capsys):
    csv, parquet = tmp_path / "rows.csv", tmp_path / "rows.parquet"
    assert main(["results", str(store.path), "--csv", str(csv), "--parquet", str(parquet), "--status", "ok"]) == 0
    from_csv, from_parquet = pd.read_csv(csv), pd.read_parquet(parquet)
    assert len(from_csv) == len(from_parquet) == 5
    assert from_csv["val_top1"].tolist() == pytest.approx(store.frame()["val_top1"].tolist())
    assert from_parquet["macs"].tolist() == pytest.approx(store.frame()["macs"].tolist())
    assert main(["results", str(store.path), "--csv", str(tmp_path / "rows.xlsx")]) == 2
    assert "unknown format; allowed suffixes: .csv, .parquet" in capsys.readouterr().err


def test_results_queries(store, capsys):
    def rows(*args):
        assert main(["results", str(store.path), "--json", *args]) == 0
        return json.loads(capsys.readouterr().out)

    assert {r["label"] for r in rows("--where", "label=swin")} == {"swin"}
    assert len(rows("--where", "label=swin", "--where", "knob.window>=4")) == 2
    assert len(rows("--where", "label!=swin")) == 2  # global: one ok, one oom
    oom = rows("--status", "oom")
    assert len(oom) == 1 and oom[0]["reason"] == "MemoryError: out of memory in the test"
    assert rows("--columns", "label,seed", "--where", "seed=1")[0].keys() == {"label", "seed"}
    agg = rows("--aggregates")
    assert len(agg) == 3 and {"val_top1_mean", "val_top1_ci95", "n"} <= set(agg[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--where", "nope=1"], "--where 'nope=1': no column 'nope'; columns:"),
        (["--where", "label~swin"], "expected COLUMN<op>VALUE"),
        (["--where", "label>swin"], "> needs a number, got 'swin'"),
        (["--columns", "label,bogus"], "--columns: no column 'bogus'"),
    ],
)
def test_results_query_errors_are_one_line(store, capsys, args, message):
    assert main(["results", str(store.path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_directory_with_one_store_is_enough(store, capsys):
    assert main(["results", str(store.path.parent), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 6


def test_store_from_the_first_release_opens_and_resumes(tmp_path):
    """Stores written before config_id, variant, heartbeats and artifacts existed gain them, keeping rows."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, suite TEXT, suite_path TEXT, suite_toml TEXT, command TEXT,
            environment TEXT, started_at REAL, finished_at REAL);
        CREATE TABLE cells (cell_id TEXT PRIMARY KEY, suite TEXT, label TEXT, mechanism TEXT, seed INTEGER,
            spec TEXT, status TEXT NOT NULL DEFAULT 'pending', reason TEXT, run_id TEXT, environment TEXT,
            backends TEXT, started_at REAL, finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0, worker TEXT);
        CREATE TABLE metrics (cell_id TEXT NOT NULL, name TEXT NOT NULL, value REAL, PRIMARY KEY (cell_id, name));
        """
    )
    suite = load_suite(write_suite(tmp_path, seeds=1))
    done = suite.cells[0]
    db.execute(
        "INSERT INTO cells (cell_id, suite, label, mechanism, seed, spec, status, attempts, worker) "
        "VALUES (?, 'fake', ?, ?, 0, ?, 'ok', 1, 'vm:1')",
        (done.cell_id, done.label, done.mechanism, json.dumps(done.spec.to_dict())),
    )
    db.execute("INSERT INTO metrics VALUES (?, 'val_top1', 71.5)", (done.cell_id,))
    db.commit()
    db.close()
    ran = []
    # the old row records no code: kept only when asked (keep_stale), else re-run
    run_suite(suite, path, runner=lambda c: ran.append(c.cell_id) or fake_runner(c), progress=False, keep_stale=True)
    assert ran == [suite.cells[1].cell_id]  # the old finished cell is kept, not re-run
    frame = Store(path).frame().set_index("cell_id")
    assert frame.loc[done.cell_id, "val_top1"] == 71.5 and frame.loc[done.cell_id, "config_id"] == done.config_id
    assert Store(path).integrity_check() == "ok"
