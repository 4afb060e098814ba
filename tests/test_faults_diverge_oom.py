"""A diverging cell and a cell that runs out of memory (issue 10, items 3 and 4): each is marked, with the step
or the allocation that failed, and the grid goes on to finish the other cells."""

from __future__ import annotations

import sys

import pytest

from attn_zoo.grid import LocalExecutor, Store, load_suite, run_suite
from attn_zoo.grid.cell import run_cell

TINY_TRAINING = """
[suite]
name = "diverge"

[model]
preset = "zoo_s32"
dims = [12, 24, 48, 96]
depths = [1, 1, 1, 1]
heads = [3, 6, 12, 24]

[data]
source = "synthetic"
train_size = 64
val_size = 32

[train]
steps = 3
batch_size = 16

[budget]
metric = "none"

[measure]
latency = false
count = false
threads = 1

[grid]
mechanism = ["global"]
"train.lr" = [1e6, 1e-3]   # an absurd learning rate sends the loss to NaN within a step or two
"""

OOM = """
[suite]
name = "oom"

[model]
preset = "zoo_s32"
backend = "reference"       # materialise the attention matrix: (256/2)^4 * 3 heads * 4 bytes = 3.2 GB

[budget]
metric = "none"

[measure]
latency = false
count = true
threads = 1

[grid]
mechanism = ["global"]
"model.img_size" = [256, 32]
"""


def test_nan_loss_marks_the_cell_diverged_with_its_step_and_the_grid_continues(tmp_path):
    path = tmp_path / "diverge.toml"
    path.write_text(TINY_TRAINING)
    suite = load_suite(path)
    summary = run_suite(suite, tmp_path / "d.sqlite", runner=lambda cell: run_cell(cell.spec), progress=False)
    assert sorted(summary.outcomes.values()) == ["diverged", "ok"]
    cells = {c["spec"]["train"]["lr"]: c for c in Store(tmp_path / "d.sqlite").cells()}
    bad, good = cells[1e6], cells[1e-3]
    assert bad["status"] == "diverged"
    step = bad["metrics"]["diverged_step"]
    assert 0 <= step < 3 and bad["reason"] == f"loss became nan at step {int(step)}"
    assert good["status"] == "ok" and 0 <= good["metrics"]["val_top1"] <= 100


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the worker's memory cap (RLIMIT_DATA) is Linux's")
def test_out_of_memory_under_the_worker_cap_is_marked_and_the_grid_continues(tmp_path):
    path = tmp_path / "oom.toml"
    path.write_text(OOM)
    suite = load_suite(path)
    executor = LocalExecutor(jobs=2, memory_limit_mb=1200)
    run_suite(suite, tmp_path / "o.sqlite", executor=executor, progress=False)
    cells = {c["spec"]["model"]["img_size"]: c for c in Store(tmp_path / "o.sqlite").cells()}
    assert cells[256]["status"] == "oom", cells[256]["reason"]
    assert "can't allocate memory" in cells[256]["reason"]
    assert cells[32]["status"] == "ok" and cells[32]["metrics"]["macs"] > 0


def test_a_worker_killed_by_the_kernel_counts_as_out_of_memory():
    executor = LocalExecutor()
    result = executor._crash_result(-9, ["Killed"])
    assert result["status"] == "oom" and "SIGKILL" in result["reason"] and "out-of-memory killer" in result["reason"]
    crash = executor._crash_result(-11, [])
    assert crash["status"] == "failed" and "SIGSEGV" in crash["reason"]
