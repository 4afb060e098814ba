"""Two runners started on the same suite at once (issue 10, item 2): both finish, every cell is run exactly
once (no cell twice, none lost), and the store is sound."""

from __future__ import annotations

import os
import subprocess
import sys

from _grid_fakes import ROOT, TESTS, executions, write_suite

from attn_zoo.grid import Store

RUNNER = """
import os, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from _grid_fakes import logging_runner, wait_for
from attn_zoo.grid import load_suite, run_suite
suite = load_suite({suite!r})
barrier = Path({barrier!r})
(barrier / str(os.getpid())).touch()
assert wait_for(lambda: len(list(barrier.iterdir())) == 2, timeout_s=240, interval_s=0.01)  # start together
summary = run_suite(suite, {store!r}, runner=logging_runner(Path({log!r}), sleep_s=0.15), progress=False)
print(summary.ran, summary.skipped, summary.elsewhere)
"""


def test_two_runners_share_the_grid_without_running_a_cell_twice(tmp_path):
    suite_path = write_suite(tmp_path, seeds=6)
    store_path, log = tmp_path / "out" / "fake.sqlite", tmp_path / "executions.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    barrier = tmp_path / "ready"
    barrier.mkdir()
    script = RUNNER.format(
        tests=str(TESTS), suite=str(suite_path), store=str(store_path), log=str(log), barrier=str(barrier)
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]

    runs = executions(log)
    cells = Store(store_path).cells()
    assert len(cells) == 12 and all(c["status"] == "ok" for c in cells)
    assert sorted(cid for cid, *_ in runs) == sorted(c["cell_id"] for c in cells)  # each exactly once
    assert all(c["attempts"] == 1 for c in cells)
    assert len({pid for _, pid, *_ in runs}) == 2, "both runners did part of the work"
    ran = [int(o[0].split()[0]) for o in outputs]
    assert sum(ran) == 12
    assert Store(store_path).integrity_check() == "ok"
