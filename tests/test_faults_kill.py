"""A runner killed with SIGKILL mid-grid (issue 10, item 1): the rerun completes, every finished cell is kept
exactly once and not re-run, the store passes SQLite's integrity check, and the killed runner's worker
process dies with it instead of running on as an orphan."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import pytest
from _grid_fakes import ROOT, TESTS, fake_runner, pid_alive, wait_for, write_suite

from attn_zoo.grid import Store, load_suite, run_suite

RUNNER = """
import sys
sys.path.insert(0, {tests!r})
from _grid_fakes import FAKE_WORKER
from attn_zoo.grid import LocalExecutor, load_suite, run_suite
suite = load_suite({suite!r})
executor = LocalExecutor(1, command=[sys.executable, "-c", FAKE_WORKER])
run_suite(suite, {store!r}, executor=executor, progress=False)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL of the parent and /proc are Linux's")
def test_sigkill_mid_grid_then_rerun(tmp_path):
    suite_path = write_suite(tmp_path, seeds=5)
    store_path = tmp_path / "out" / "fake.sqlite"
    pids = tmp_path / "worker_pids.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT), FAKE_WORKER_PIDS=str(pids), FAKE_WORKER_SLEEP="0.4")
    script = RUNNER.format(tests=str(TESTS), suite=str(suite_path), store=str(store_path))
    runner = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:

        def finished() -> int:
            if not store_path.exists():
                return 0
            try:
                db = sqlite3.connect(store_path, timeout=5)
                try:
                    return db.execute("SELECT COUNT(*) FROM cells WHERE status='ok'").fetchone()[0]
                finally:
                    db.close()
            except sqlite3.Error:
                return 0

        assert wait_for(lambda: finished() >= 3, timeout_s=120), runner.stderr.read() if runner.poll() else ""
        # kill while a worker runs the next cell (each sleeps 0.4 s)
        assert wait_for(lambda: pids.exists() and len(pids.read_text().split()) > finished(), timeout_s=10)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    in_flight_worker = int(pids.read_text().split()[-1])
    assert wait_for(lambda: not pid_alive(in_flight_worker), timeout_s=10), "the killed runner's worker lives on"

    store = Store(store_path)
    assert store.integrity_check() == "ok"
    before = {c["cell_id"]: c for c in store.cells()}
    done = {cid for cid, c in before.items() if c["status"] == "ok"}
    assert len(done) >= 3 and any(c["status"] == "running" for c in before.values())

    ran = []
    summary = run_suite(
        load_suite(suite_path), store_path, runner=lambda c: ran.append(c.cell_id) or fake_runner(c), progress=False
    )
    assert set(ran).isdisjoint(done) and len(ran) == len(before) - len(done)
    assert summary.ok == len(ran) and summary.skipped == len(done)
    after = {c["cell_id"]: c for c in store.cells()}
    assert all(c["status"] == "ok" for c in after.values())
    for cid in done:  # finished cells kept as they were: same finish time, same metrics, claimed once
        assert after[cid]["finished_at"] == before[cid]["finished_at"]
        assert after[cid]["metrics"] == before[cid]["metrics"] and after[cid]["attempts"] == 1
    db = sqlite3.connect(store_path)
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT cell_id) FROM cells").fetchone() == (10, 10)
    assert db.execute(
        "SELECT COUNT(*) FROM (SELECT cell_id, name FROM metrics GROUP BY 1, 2 HAVING COUNT(*) > 1)"
    ).fetchone() == (0,)
    db.close()
    assert store.integrity_check() == "ok"
