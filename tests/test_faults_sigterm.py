"""SIGTERM like Ctrl-C, cell working directories under the results directory, the runner that finishes first,
a worker's own failure reason, and the duration estimate (issue 21)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from _grid_fakes import ROOT, TESTS, fake_runner, pid_alive, wait_for, write_suite

from attn_zoo.cli import main
from attn_zoo.grid import LocalExecutor, Store, load_suite, run_suite
from attn_zoo.grid.executors import error_lines, remove_dead_work_dirs
from attn_zoo.grid.store import worker_id

CLI_RUNNER = """
import sys
sys.path.insert(0, {tests!r})
from _grid_fakes import FAKE_WORKER
from attn_zoo.cli import main
from attn_zoo.grid import LocalExecutor, register_executor

@register_executor("fake-local")
def _fake(work_root=None, **_):
    return LocalExecutor(1, command=[sys.executable, "-c", FAKE_WORKER], work_root=work_root)

sys.exit(main(["run", {suite!r}, "--out", {out!r}, "--executor", "fake-local", "--no-progress", "--no-plots"]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and /proc as on Linux")
def test_sigterm_mid_cell_hands_the_cell_back_cleans_up_and_exits_143(tmp_path):
    suite_path = write_suite(tmp_path, seeds=1)
    out, pids = tmp_path / "out", tmp_path / "worker_pids.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT), FAKE_WORKER_PIDS=str(pids), FAKE_WORKER_SLEEP="60")
    script = CLI_RUNNER.format(tests=str(TESTS), suite=str(suite_path), out=str(out))
    runner = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: pids.exists() and pids.read_text().strip(), timeout_s=120)
        work = list((out / ".cells").glob("runner-*/attn_zoo_cell_*"))
        assert len(work) == 1 and (work[0] / "spec.json").is_file()  # the cell's working directory is in --out
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 143
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("suite fake:")]
    assert lines == [
        "attn-zoo: terminated (SIGTERM); finished cells are in the store, the interrupted ones resume with "
        "`attn-zoo run`"
    ]
    worker = int(pids.read_text().split()[0])
    assert wait_for(lambda: not pid_alive(worker), timeout_s=10)
    assert not list((out / ".cells").iterdir())  # temporary files removed
    cells = Store(out / "fake.sqlite").cells()
    assert sorted(((c["status"], c["reason"]) for c in cells), key=str) == [
        ("pending", "interrupted"),
        ("pending", None),
    ]
    summary = run_suite(load_suite(suite_path), out / "fake.sqlite", runner=fake_runner, progress=False)
    assert summary.ok == 2 and summary.failed == 0  # resumable


def test_a_later_run_removes_the_working_directories_of_dead_runners(tmp_path):
    root = tmp_path / ".cells"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = worker_id().split(":")[0]
    for name, owner in (("runner-dead", f"{host}:{dead.stdout.strip()}:1"), ("runner-live", worker_id())):
        (root / name / "attn_zoo_cell_x").mkdir(parents=True)
        (root / name / "owner").write_text(owner)
    (root / "runner-other-host").mkdir()
    (root / "runner-other-host" / "owner").write_text("elsewhere.example:1:1")
    assert remove_dead_work_dirs(root) == [root / "runner-dead"]
    assert sorted(p.name for p in root.iterdir()) == ["runner-live", "runner-other-host"]


def test_the_runner_that_finishes_first_exits_0_and_says_another_still_works(tmp_path, capsys):
    suite_path = write_suite(tmp_path, seeds=1)
    suite, store_path = load_suite(suite_path), tmp_path / "out" / "fake.sqlite"
    store = Store(store_path)
    store.register_cells(suite.name, suite.cells)
    other = store.start_run(suite.name, str(suite_path), suite.text, "another runner", {})
    assert store.claim(suite.cells[0].cell_id, other, False, 300.0)  # held by a live runner (this process)
    from attn_zoo.grid import InlineExecutor, register_executor

    register_executor("fake-first")(lambda **_: InlineExecutor(lambda cell, _dir: fake_runner(cell)))
    args = ["run", str(suite_path), "--out", str(tmp_path / "out"), "--executor", "fake-first", "--no-progress"]
    assert main([*args, "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "1 ran, 0 already done, ok 1 failed 0; 1 still running in another runner, which records them" in err


def test_a_workers_failure_reason_is_its_own_error_line_not_a_warning(tmp_path):
    script = (
        "import sys, warnings\n"
        "warnings.warn('overflow encountered in exp', RuntimeWarning)\n"
        "print('ValueError: the real reason', file=sys.stderr)\n"
        "warnings.warn('something unrelated', UserWarning)\n"
        "sys.exit(7)\n"
    )
    suite = load_suite(write_suite(tmp_path, seeds=1, mechanisms=("global",)))
    executor = LocalExecutor(1, command=[sys.executable, "-c", script], work_root=tmp_path / "out" / ".cells")
    summary = run_suite(suite, tmp_path / "out" / "fake.sqlite", executor=executor, progress=False)
    assert summary.failed == 1
    [cell] = Store(tmp_path / "out" / "fake.sqlite").cells()
    assert cell["reason"] == "worker exited with code 7: ValueError: the real reason"
    lines = ["x.py:3: RuntimeWarning: overflow", "  y = np.exp(x)", "Killed"]
    assert error_lines(lines) == ["Killed"] and error_lines(lines[:2]) == []


def test_the_runner_prints_each_cells_estimated_duration_after_its_first_steps(tmp_path, capsys):
    script = (
        "import json, os, sys\n"
        "report = {'steps_done': 5, 'total_steps': 600, 'seconds_per_step': 0.5, 'estimated_s': 300.0}\n"
        "open(os.environ['ATTN_ZOO_PROGRESS_FILE'], 'w').write(json.dumps(report))\n"
        "import time; time.sleep(0.5)\n"
        "json.dump({'status': 'ok', 'metrics': {'val_top1': 1.0}}, open(sys.argv[2], 'w'))\n"
    )
    suite = load_suite(write_suite(tmp_path, seeds=1, mechanisms=("global",)))
    executor = LocalExecutor(1, command=[sys.executable, "-c", script], work_root=tmp_path / "out" / ".cells")
    run_suite(suite, tmp_path / "out" / "fake.sqlite", executor=executor, progress=False, heartbeat_s=0.1)
    err = capsys.readouterr().out  # tqdm.write: beside the progress bar
    assert "  global seed 0: about 5.0 min for 600 steps (0.5 s a step over the first 5)" in err


def test_the_worker_estimates_after_its_first_steps_and_stops_a_training_longer_than_a_year(tmp_path, monkeypatch):
    import time

    from attn_zoo.errors import ConfigError
    from attn_zoo.train.run import progress_reporter

    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])  # every step takes 1 s

    def steps(on_step, total):
        for step in range(1, 10):
            now[0] = float(step)
            on_step(step, total, 0.0)

    monkeypatch.setenv("ATTN_ZOO_PROGRESS_FILE", str(tmp_path / "progress.json"))
    monkeypatch.delenv("ATTN_ZOO_ALLOW_LONG", raising=False)
    steps(progress_reporter(after=3), 1000)
    report = json.loads((tmp_path / "progress.json").read_text())
    assert report == {"steps_done": 3, "total_steps": 1000, "seconds_per_step": 1.0, "estimated_s": 1000.0}
    with pytest.raises(ConfigError, match=r"take 1\.27 years; allowed: at most one year \(pass --allow-long"):
        steps(progress_reporter(after=3), 40_000_000)
    monkeypatch.setenv("ATTN_ZOO_ALLOW_LONG", "1")
    steps(progress_reporter(after=3), 40_000_000)  # the user insisted
