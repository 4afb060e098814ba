"""Same seed, same machine, same thread count: the same losses and accuracy for every mechanism, bit for bit.

Each run is a separate process (tests/_determinism_worker.py: a few training steps of every built-in mechanism in
a tiny 32x32 harness). Two processes run at the same time, as two cells do under ``executor = { jobs = 2 }``,
and a third alone afterwards; all three must agree exactly. The thread count is part of the recipe: CPU
reductions split their sums by thread, so a cell pins ``measure.threads`` (the quick suite: 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_determinism_worker.py")


def _start(threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, str(WORKER), str(threads)], env=env, stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return json.loads(out)


def test_every_mechanism_trains_identically_in_separate_and_concurrent_processes():
    concurrent = [_start(1), _start(1)]  # two cells at once, as under jobs = 2
    first, second = (_result(p) for p in concurrent)
    alone = _result(_start(1))
    assert first["threads"] == 1
    assert set(first["runs"]) == {"global", "swin", "ssa", "iwsa", "msda", "gcvit", "msa_conv"}
    for mechanism, want in first["runs"].items():
        assert second["runs"][mechanism] == want, mechanism
        assert alone["runs"][mechanism] == want, mechanism
