"""The runner and the store: resume, retry, per-cell status, claiming with stale detection, the exactly-once
finish, aggregates, artifacts, interruption, and a pluggable executor. Cells run in-process (fake results)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from _grid_fakes import fake_runner, write_suite

from attn_zoo.grid import InlineExecutor, Store, load_suite, run_suite
from attn_zoo.grid.store import _start_time, worker_alive
from attn_zoo.train.recipe import Diverged


@pytest.fixture
def suite(tmp_path):
    return load_suite(write_suite(tmp_path, seeds=3))


def counting(runner):
    calls = []

    def run(cell):
        calls.append(cell.cell_id)
        return runner(cell)

    return run, calls


def test_rerun_skips_finished_cells_and_retry_reruns_only_failed(tmp_path, suite):
    store_path = tmp_path / "out" / "fake.sqlite"
    first = suite.cells[1].cell_id

    def flaky(cell):
        if cell.cell_id == first:
            raise RuntimeError("boom")
        return fake_runner(cell)

    summary = run_suite(suite, store_path, runner=flaky, progress=False)
    assert (summary.ran, summary.ok, summary.failed) == (6, 5, 1)
    store = Store(store_path)
    failed = store.cells(status="failed")
    assert [c["cell_id"] for c in failed] == [first] and failed[0]["reason"] == "RuntimeError: boom"

    run, calls = counting(fake_runner)
    again = run_suite(suite, store_path, runner=run, progress=False)
    assert calls == [] and again.skipped == 6  # the failed cell is not retried unasked
    retry = run_suite(suite, store_path, runner=run, progress=False, retry_failed=True)
    assert calls == [first] and retry.ok == 1
    cells = {c["cell_id"]: c for c in store.cells()}
    assert all(c["status"] == "ok" for c in cells.values())
    assert cells[first]["attempts"] == 2 and all(c["attempts"] == 1 for k, c in cells.items() if k != first)
    assert store.integrity_check() == "ok"


def test_each_outcome_is_recorded_with_its_reason(tmp_path, suite):
    outcomes = {
        0: lambda: {"status": "ok", "metrics": {"val_top1": 1.0}},
        1: lambda: (_ for _ in ()).throw(Diverged(17, float("nan"))),
        2: lambda: (_ for _ in ()).throw(MemoryError("no room")),
        3: lambda: (_ for _ in ()).throw(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")),
        4: lambda: {"status": "timeout", "reason": "cell ran past its time limit of 5 s", "metrics": {}},
        5: lambda: {"status": "weird", "metrics": {}},
    }
    index = {c.cell_id: i for i, c in enumerate(suite.cells)}
    run_suite(suite, tmp_path / "s.sqlite", runner=lambda cell: outcomes[index[cell.cell_id]](), progress=False)
    rows = sorted(Store(tmp_path / "s.sqlite").cells(), key=lambda r: index[r["cell_id"]])
    assert [r["status"] for r in rows] == ["ok", "diverged", "oom", "oom", "timeout", "failed"]
    assert rows[1]["reason"] == "loss became nan at step 17" and rows[1]["metrics"]["diverged_step"] == 17
    assert rows[2]["reason"] == "MemoryError: no room"
    assert "CUDA out of memory" in rows[3]["reason"]
    assert rows[5]["reason"].startswith("unknown status 'weird'")


def test_aggregates_per_configuration_over_seeds(tmp_path, suite):
    run_suite(suite, tmp_path / "s.sqlite", runner=fake_runner, progress=False)
    store = Store(tmp_path / "s.sqlite")
    agg = store.aggregates()
    top1 = agg[agg["metric"] == "val_top1"].set_index("label")
    frame = store.frame()
    for label, group in frame.groupby("label"):
        values = group["val_top1"].to_numpy()
        assert top1.loc[label, "n"] == 3
        assert top1.loc[label, "mean"] == pytest.approx(values.mean())
        assert top1.loc[label, "std"] == pytest.approx(values.std(ddof=1))
        # 95% Student-t interval, 2 degrees of freedom
        t95 = 4.30265  # Student t, 0.975 quantile, 2 degrees of freedom (a printed table)
        assert top1.loc[label, "ci95"] == pytest.approx(t95 * values.std(ddof=1) / 3**0.5, rel=1e-5)
    assert set(frame["config_id"]) == set(agg["config_id"])


def test_artifacts_are_kept_relative_and_paths_outside_are_dropped(tmp_path, suite):
    def with_files(cell, artifact_dir):
        artifact_dir.mkdir(parents=True, exist_ok=True)
        inside = artifact_dir / "erf.npy"
        inside.write_bytes(b"x")
        return {"status": "ok", "metrics": {}, "artifacts": {"erf": str(inside), "evil": "/etc/passwd"}}

    store_path = tmp_path / "out" / "fake.sqlite"
    run_suite(suite, store_path, executor=InlineExecutor(with_files), progress=False)
    cell = Store(store_path).cells()[0]
    assert cell["artifacts"] == {"erf": f"fake/artifacts/{cell['cell_id']}/erf.npy"}
    assert "ignored artifacts outside the results directory: ['/etc/passwd']" in cell["reason"]


def test_artifacts_are_kept_with_a_results_directory_relative_to_the_working_directory(tmp_path, suite, monkeypatch):
    def with_files(cell, artifact_dir):
        artifact_dir.mkdir(parents=True, exist_ok=True)
        (artifact_dir / "erf.npy").write_bytes(b"x")
        return {"status": "ok", "metrics": {}, "artifacts": {"erf": str(artifact_dir / "erf.npy")}}

    monkeypatch.chdir(tmp_path)  # `attn-zoo run --out results`: the default, relative
    run_suite(suite, "results/fake.sqlite", executor=InlineExecutor(with_files), progress=False)
    cell = Store(tmp_path / "results" / "fake.sqlite").cells()[0]
    assert cell["artifacts"] == {"erf": f"fake/artifacts/{cell['cell_id']}/erf.npy"} and not cell["reason"]


def test_interrupt_releases_claimed_cells_and_a_rerun_finishes(tmp_path, suite):
    store_path = tmp_path / "s.sqlite"

    def interrupted(cell):
        if cell.cell_id == suite.cells[2].cell_id:
            raise KeyboardInterrupt
        return fake_runner(cell)

    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, store_path, runner=interrupted, progress=False)
    store = Store(store_path)
    assert store.counts() == {"ok": 2, "pending": 4}
    run, calls = counting(fake_runner)
    run_suite(suite, store_path, runner=run, progress=False)
    assert len(calls) == 4 and store.counts() == {"ok": 6}


class ThreadedExecutor:
    """An executor of the kind a cluster backend is: cells run concurrently, results arrive out of order."""

    name, slots = "threads", 3

    def __init__(self):
        self.pool = ThreadPoolExecutor(self.slots)
        self.futures = {}

    def submit(self, cell, artifact_dir):
        token = object()
        self.futures[token] = self.pool.submit(lambda: (time.sleep(0.05 * (cell.seed % 2)), fake_runner(cell))[1])
        return token

    def wait(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        while True:
            done = [(t, f.result()) for t, f in self.futures.items() if f.done()]
            for t, _ in done:
                del self.futures[t]
            if done or not self.futures or time.monotonic() >= deadline:
                return done
            time.sleep(0.01)

    def shutdown(self):
        self.pool.shutdown(wait=True)


def test_a_concurrent_executor_plugs_in(tmp_path, suite):
    summary = run_suite(suite, tmp_path / "s.sqlite", executor=ThreadedExecutor(), progress=False, heartbeat_s=0.05)
    assert summary.ok == 6
    assert Store(tmp_path / "s.sqlite").counts() == {"ok": 6}


# -- claiming --------------------------------------------------------------------------------------------
def _held(store, cell_id, worker, heartbeat):
    with store.transaction() as db:
        db.execute(
            "UPDATE cells SET status='running', run_id='other', worker=?, started_at=?, heartbeat_at=? WHERE cell_id=?",
            (worker, heartbeat, heartbeat, cell_id),
        )


def test_claim_takes_over_only_cells_whose_runner_is_gone(tmp_path, suite):
    store = Store(tmp_path / "s.sqlite")
    store.register_cells(suite.name, suite.cells)
    ids = [c.cell_id for c in suite.cells]
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        dead_pid = int(dead.stdout)
        now = time.time()
        _held(store, ids[0], f"{host}:{sleeper.pid}:{_start_time(sleeper.pid)}", now)  # alive
        _held(store, ids[1], f"{host}:{dead_pid}:123", now)  # exited
        _held(store, ids[2], f"{host}:{sleeper.pid}:1", now)  # pid reused by another process
        _held(store, ids[3], "elsewhere:42:1", now)  # another host, fresh heartbeat
        _held(store, ids[4], "elsewhere:42:1", now - 3600)  # another host, silent for an hour
        assert worker_alive(f"{host}:{sleeper.pid}:{_start_time(sleeper.pid)}") is True
        taken = [store.claim(cid, "me", stale_after_s=300) for cid in ids[:5]]
        assert taken == [False, True, True, False, True]
    finally:
        sleeper.kill()
        sleeper.wait()
    # the finish of a run that lost its claim is not written: the cell is recorded once, by its holder
    assert store.finish_cell(ids[0], "ok", {"x": 1.0}, run_id="me") is False
    assert store.status(ids[0]) == "running" and store.cells()[0]["metrics"] == {}
    assert store.finish_cell(ids[1], "ok", {"x": 1.0}, run_id="me") is True


def test_worker_id_names_this_process():
    from attn_zoo.grid.store import worker_id

    host, pid, start = worker_id().rsplit(":", 2)
    assert host == socket.gethostname() and int(pid) == os.getpid() and start == _start_time(os.getpid())
