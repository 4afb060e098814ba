"""Writes that fail (issue 10, item 5): a full disk and a read-only results directory give one clear error,
the grid stops, and the store keeps every cell finished before, intact."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from _grid_fakes import fake_runner, write_suite

import attn_zoo.grid.store as store_module
from attn_zoo.cli import main
from attn_zoo.grid import InlineExecutor, Store, StoreError, load_suite, register_executor, run_suite


def many_metrics(cell):
    """A result with enough numbers that recording it needs new database pages."""
    result = fake_runner(cell)
    result["metrics"].update({f"extra_{i:04d}": float(i) for i in range(400)})
    return result


@register_executor("fake-inline")
def _fake_inline(**_):
    return InlineExecutor(lambda cell, _dir: many_metrics(cell))


@contextlib.contextmanager
def page_cap(switch: dict):
    """Cap every store connection at its current size once ``switch["on"]`` is set: SQLite's own
    SQLITE_FULL ("database or disk is full"), raised inside a write, as on a full disk."""
    real = sqlite3.connect

    def connect(*args, **kwargs):
        db = real(*args, **kwargs)
        if switch.get("on"):
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {pages}")
        return db

    store_module.sqlite3.connect = connect
    try:
        yield
    finally:
        store_module.sqlite3.connect = real


def test_full_disk_stops_the_grid_with_a_clear_error_and_keeps_finished_cells(tmp_path):
    store_path = tmp_path / "out" / "fake.sqlite"
    first = load_suite(write_suite(tmp_path, seeds=2))
    run_suite(first, store_path, runner=many_metrics, progress=False)
    before = {c["cell_id"]: c for c in Store(store_path).cells()}

    bigger = load_suite(write_suite(tmp_path, seeds=4))
    switch: dict = {}

    def fill_then_run(cell):
        switch["on"] = True  # cells are registered and this one claimed: the disk is full from here
        return many_metrics(cell)

    with page_cap(switch), pytest.raises(StoreError) as info:
        run_suite(bigger, store_path, runner=fill_then_run, progress=False)
    text = str(info.value)
    assert "database or disk is full" in text and "the disk is full" in text
    assert str(store_path) in text and "cells finished before are kept" in text

    store = Store(store_path)
    assert store.integrity_check() == "ok"
    after = {c["cell_id"]: c for c in store.cells()}
    for cid, cell in before.items():
        assert after[cid]["status"] == "ok" and after[cid]["metrics"] == cell["metrics"]
    assert sum(c["status"] == "ok" for c in after.values()) == len(before)  # the cell that hit the wall: not ok
    summary = run_suite(bigger, store_path, runner=many_metrics, progress=False)  # space again: it finishes
    assert summary.ok == 4 and store.counts() == {"ok": 8}


def test_full_disk_through_the_cli_is_one_line(tmp_path, capsys):
    suite = write_suite(tmp_path, seeds=2)
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--executor", "fake-inline", "--no-progress", "--no-plots"]) == 0
    capsys.readouterr()
    bigger = write_suite(tmp_path, seeds=3)
    switch = {"on": True}
    with page_cap(switch):
        code = main(["run", str(bigger), "--out", str(out), "--executor", "fake-inline", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    error = [line for line in err.splitlines() if line.startswith("attn-zoo: error:")]
    assert len(error) == 1 and "database or disk is full" in error[0] and "Traceback" not in err
    assert Store(out / "fake.sqlite").integrity_check() == "ok" and Store(out / "fake.sqlite").counts()["ok"] == 4


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root")
def test_a_really_full_filesystem(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        store_path = mnt / "fake.sqlite"
        suite = load_suite(write_suite(tmp_path, seeds=30))
        with pytest.raises(StoreError, match="the disk is full"):
            run_suite(suite, store_path, runner=many_metrics, progress=False)
        store = Store(store_path, readonly=True)
        assert store.integrity_check() == "ok"
        ok = store.cells(status="ok")
        assert ok and len({len(c["metrics"]) for c in ok}) == 1 and len(ok[0]["metrics"]) > 400  # whole cells only
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@contextlib.contextmanager
def read_only(directory: Path):
    """Make ``directory`` read-only for this process: a read-only bind mount as root (root ignores
    permission bits), chmod otherwise."""
    if os.geteuid() == 0:
        if subprocess.run(["mount", "--bind", str(directory), str(directory)], capture_output=True).returncode:
            pytest.skip("bind mounts are not permitted here (root ignores chmod)")
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True, capture_output=True)
            yield
        finally:
            if subprocess.run(["umount", str(directory)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(directory)], check=False)  # detach even if busy
                pytest.fail(f"{directory} was still in use at umount: a file handle leaked")
    else:
        modes = {p: p.stat().st_mode for p in (directory, *directory.iterdir())}
        for path in modes:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            for path, mode in modes.items():
                os.chmod(path, mode)


def test_read_only_results_directory(tmp_path, capsys):
    out = tmp_path / "out"
    run_suite(load_suite(write_suite(tmp_path, seeds=2)), out / "fake.sqlite", runner=fake_runner, progress=False)
    Store(out / "fake.sqlite").checkpoint()
    bigger = write_suite(tmp_path, seeds=3)
    digest = hashlib.sha256((out / "fake.sqlite").read_bytes()).hexdigest()
    with read_only(out):
        code = main(["run", str(bigger), "--out", str(out), "--executor", "fake-inline", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2
        error = [line for line in err.splitlines() if line.startswith("attn-zoo: error:")]
        assert len(error) == 1 and "not writable" in error[0] and "Traceback" not in err, err
        # reading a store one cannot write still works
        assert main(["results", str(out / "fake.sqlite"), "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 4
    assert hashlib.sha256((out / "fake.sqlite").read_bytes()).hexdigest() == digest
    assert Store(out / "fake.sqlite").integrity_check() == "ok"
