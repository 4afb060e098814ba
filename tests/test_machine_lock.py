"""Timing owns the machine: a worker holds the machine lock shared from before its imports; a measurement
waits until no other worker computes, and no worker starts computing while one measures. The scripts load
attn_zoo/measure/machine.py by path (stdlib only), so they start in milliseconds; ordering is asserted, never
durations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _grid_fakes import write_suite

from attn_zoo.grid import LocalExecutor, Store, load_suite, run_suite
from attn_zoo.measure import machine

MACHINE = Path(machine.__file__)
SCRIPT = r"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("machine", {machine!r})
machine = importlib.util.module_from_spec(spec)
spec.loader.exec_module(machine)
role, log, go = sys.argv[1], sys.argv[2], sys.argv[3]

def say(text):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, (text + "\n").encode())
    os.close(fd)

def wait_for_go():
    for _ in range(6000):
        if os.path.exists(go):
            return
        time.sleep(0.01)

if role == "train":
    say("train start")
    wait_for_go()
    say("train end")
elif role == "step":  # a training loop that steps aside for measurements between its steps
    say("train start")
    paused = 0.0
    while not os.path.exists(go):
        paused += machine.yield_to_measurement()
        time.sleep(0.005)
    say("train end, paused" if paused > 0 else "train end")
else:
    say("measure waiting")
    with machine.measuring() as info:
        say("measure start")
        wait_for_go()
    say("measure end")
"""


def _start(tmp_path: Path, role: str, log: Path, go: Path) -> subprocess.Popen:
    script = tmp_path / "role.py"
    script.write_text(SCRIPT.format(machine=str(MACHINE)))
    command = machine.worker_prefix(tmp_path / "lock") + [sys.executable, str(script), role, str(log), str(go)]
    return subprocess.Popen(command)


def _wait_for(log: Path, line: str) -> None:
    for _ in range(6000):
        if log.exists() and line in log.read_text().splitlines():
            return
        time.sleep(0.01)
    raise AssertionError(f"{line!r} never logged: {log.read_text() if log.exists() else ''}")


def test_a_measurement_waits_until_the_training_worker_stops(tmp_path):
    log, go = tmp_path / "log", tmp_path / "go"
    trainer = _start(tmp_path, "train", log, go)
    _wait_for(log, "train start")
    measurer = _start(tmp_path, "measure", log, go)
    _wait_for(log, "measure waiting")
    time.sleep(0.5)  # were the lock broken, the measurement would have started by now
    assert "measure start" not in log.read_text()
    go.write_text("")
    assert trainer.wait(60) == 0 and measurer.wait(60) == 0
    assert log.read_text().splitlines() == [
        "train start",
        "measure waiting",
        "train end",
        "measure start",
        "measure end",
    ]


def test_no_worker_starts_while_one_measures(tmp_path):
    log, go = tmp_path / "log", tmp_path / "go"
    measurer = _start(tmp_path, "measure", log, go)
    _wait_for(log, "measure start")
    trainer = _start(tmp_path, "train", log, go)
    time.sleep(0.5)
    assert "train start" not in log.read_text()
    go.write_text("")
    assert measurer.wait(60) == 0 and trainer.wait(60) == 0
    assert log.read_text().splitlines() == [
        "measure waiting",
        "measure start",
        "measure end",
        "train start",
        "train end",
    ]


def test_measuring_outside_a_grid_worker_does_not_wait(tmp_path):
    with machine.measuring() as info:
        pass
    assert not machine.locked_worker() and "machine_wait_s" in info and "cpu_load_after_1m" in info
    # a process that inherited the variable but not the descriptor (a torchrun rank) holds no lock
    other = (tmp_path / "x").open("w")
    try:
        assert machine._parse(f"{other.fileno()}:1:2:{tmp_path / 'turn'}") is None
        st = os.fstat(other.fileno())
        assert machine._parse(f"{other.fileno()}:{st.st_dev}:{st.st_ino}:/t:u") == (other.fileno(), "/t:u")
    finally:
        other.close()


# a worker command that reports whether it holds the machine lock shared on the descriptor it was given
LOCKED_WORKER = r"""
import fcntl, json, os, sys
fd = os.environ.get("ATTN_ZOO_MACHINE_LOCK", "").split(":")[0]
held = 0.0
if fd.isdigit():
    try:  # our shared hold on this descriptor converts to shared again without blocking
        fcntl.flock(int(fd), fcntl.LOCK_SH | fcntl.LOCK_NB)
        held = 1.0
    except OSError:
        held = -1.0
json.dump({"status": "ok", "metrics": {"held": held}}, open(sys.argv[2], "w"))
"""


def test_the_runner_gives_local_workers_the_results_directorys_lock(tmp_path):
    suite = load_suite(write_suite(tmp_path, seeds=1, mechanisms=("global",)))
    executor = LocalExecutor(1, command=[sys.executable, "-c", LOCKED_WORKER])
    store = tmp_path / "out" / "fake.sqlite"
    run_suite(suite, store, executor=executor, progress=False)
    assert executor.machine_lock == store.parent.resolve()
    assert (store.parent / machine.LOCK_NAME).exists()
    (row,) = Store(store).cells()
    assert row["metrics"]["held"] == 1.0, json.dumps(row)


# a worker that waits "for the machine" longer than the time limit, noting it as measuring() does
WAITING_WORKER = r"""
import json, os, sys, time
path = os.environ["ATTN_ZOO_MACHINE_WAIT"] if sys.argv[1] == "note" else os.devnull
with open(path, "w") as f:
    f.write(f"0.0 {time.monotonic()}")
time.sleep(5.0)
with open(path, "w") as f:
    f.write("5.0 -1")
json.dump({"status": "ok", "metrics": {}}, open(sys.argv[3], "w"))
"""


def test_waiting_for_the_machine_does_not_count_against_the_time_limit(tmp_path):
    from attn_zoo.grid.executors import run_cell_in_worker

    cell = load_suite(write_suite(tmp_path, seeds=1, mechanisms=("global",))).cells[0]
    outcomes = {}
    for mode in ("note", "silent"):
        command = [sys.executable, "-c", WAITING_WORKER, mode]
        outcomes[mode] = run_cell_in_worker(cell, timeout_s=3.0, artifact_dir=tmp_path / mode, command=command)
    assert outcomes["note"]["status"] == "ok" and outcomes["silent"]["status"] == "timeout"


def test_training_steps_aside_between_steps_for_a_waiting_measurement(tmp_path):
    log, go = tmp_path / "log", tmp_path / "go"
    trainer = _start(tmp_path, "step", log, go)
    _wait_for(log, "train start")
    measurer = _start(tmp_path, "measure", log, go)
    _wait_for(log, "measure start")  # while the trainer still runs: it dropped its hold between two steps
    assert trainer.poll() is None
    assert log.read_text().splitlines() == ["train start", "measure waiting", "measure start"]
    go.write_text("")
    assert trainer.wait(60) == 0 and measurer.wait(60) == 0
    assert sorted(log.read_text().splitlines()[3:]) == ["measure end", "train end, paused"]


def test_yield_to_measurement_is_a_no_op_outside_a_locked_worker():
    assert machine.yield_to_measurement() == 0.0
