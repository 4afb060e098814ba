"""A store says what it is: application_id and user_version on creation; read-only commands never write or
create anything and refuse foreign and empty files (exit 2, file byte-identical); `run` refuses foreign files
and newer schemas in one line and migrates schema 1 (the committed reference stores) explicitly."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from _grid_fakes import ROOT, fake_runner, write_suite

from attn_zoo.cli import main
from attn_zoo.grid import Store, StoreError, load_suite, run_suite
from attn_zoo.grid.store import APPLICATION_ID, SCHEMA_VERSION

REFERENCE = ROOT / "results" / "reference"


def _foreign(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE precious (x INTEGER)")
    db.execute("INSERT INTO precious VALUES (42)")
    db.commit()
    db.close()
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _wrong_columns(path: Path) -> Path:
    """Tables of the right names, but a cells table of another shape."""
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE runs (a); CREATE TABLE cells (a, b); CREATE TABLE metrics (c);")
    db.close()
    return path


def _newer(path: Path) -> Path:
    Store(path)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    return path


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_a_new_store_says_what_it_is(tmp_path):
    Store(tmp_path / "s.sqlite")
    db = sqlite3.connect(tmp_path / "s.sqlite")
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


@pytest.mark.parametrize(
    "make", [_foreign, _empty, _wrong_columns, _newer], ids=["foreign", "empty", "columns", "newer"]
)
@pytest.mark.parametrize("command", ["report", "results", "compare", "verify"])
def test_read_only_commands_refuse_foreign_and_empty_files_and_leave_them_untouched(tmp_path, capsys, make, command):
    home = tmp_path / "d"
    home.mkdir()
    path = make(home / "p.sqlite")
    before = _files(home)
    argv = {"compare": ["compare", str(path), str(path)]}.get(command, [command, str(path)])
    if command == "report":
        argv += ["--markdown", "--out", str(tmp_path / "rep")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert ("newer than this attn_zoo knows" if make is _newer else "not an attn_zoo store") in err
    assert _files(home) == before  # byte-identical, and no -wal / -shm file left beside it


@pytest.mark.parametrize("make", [_foreign, _wrong_columns, _newer], ids=["foreign", "columns", "newer"])
def test_run_refuses_a_file_that_is_not_its_store_in_one_line(tmp_path, capsys, make):
    suite_file = write_suite(tmp_path, seeds=1, mechanisms=("global",))
    out = tmp_path / "out"
    out.mkdir()
    path = make(out / "fake.sqlite")
    before = _files(out)
    with pytest.raises(StoreError, match=r"not an attn_zoo store|newer than this attn_zoo knows"):
        run_suite(load_suite(suite_file), path, runner=fake_runner, progress=False)
    assert main(["run", str(suite_file), "--out", str(out), "--no-progress", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("attn-zoo: error: results store") and "Traceback" not in "\n".join(err)
    assert _files(out) == before


def test_run_makes_an_empty_file_a_store(tmp_path):
    """An empty file holds nothing to lose (and may be a concurrent runner's store being created)."""
    suite = load_suite(write_suite(tmp_path, seeds=1, mechanisms=("global",)))
    path = _empty(tmp_path / "fake.sqlite")
    run_suite(suite, path, runner=fake_runner, progress=False)
    assert Store(path, readonly=True).counts() == {"ok": 1}


@pytest.mark.parametrize("name", ["cifar10_equal_macs", "pathfinder_equal_macs", "scaling"])
def test_the_reference_stores_migrate_from_schema_1(tmp_path, name):
    original = REFERENCE / f"{name}.sqlite"
    pristine = original.read_bytes()
    old = Store(original, readonly=True)  # read-only: schema 1 reads as it is
    assert old.version == 1
    before = old.frame(status=None)
    copy = tmp_path / f"{name}.sqlite"
    shutil.copyfile(original, copy)
    store = Store(copy)  # opening for writing migrates, once
    assert store.migrated_from == 1 and store.version == SCHEMA_VERSION
    assert Store(copy).migrated_from is None
    after = store.frame(status=None)
    shared = [c for c in before.columns if c in after.columns]
    assert len(after) == len(before) > 0 and before[shared].equals(after[shared])
    checked, bad = store.verify()
    assert checked == len(before) and bad == []
    db = sqlite3.connect(copy)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    assert original.read_bytes() == pristine


def test_read_only_commands_on_a_schema_1_store_write_nothing(tmp_path, capsys):
    home = tmp_path / "d"
    home.mkdir()
    path = home / "cifar10_equal_macs.sqlite"
    shutil.copyfile(REFERENCE / path.name, path)
    before = _files(home)
    assert main(["results", str(path)]) == 0
    assert main(["report", str(path), "--markdown", "--out", str(tmp_path / "rep")]) == 0
    assert main(["compare", str(path), str(path)]) == 0
    assert main(["verify", str(path)]) == 2  # schema 1 carries no digests: says so in one line
    err = capsys.readouterr().err
    assert "has schema 1, whose rows carry no digests" in err
    assert _files(home) == before
