"""One cell with DistributedDataParallel (issue 9, item 2): two CPU processes under torchrun (gloo) train a
tiny model to the same loss as one process with the same global batch, and rank 0 alone writes the row,
which has the cell id `attn-zoo run` gives the cell. The sharded sampler hands rank r the r-th slice of
each global batch the one-process run draws; bad world sizes and cell names are one clear error.

The run is the command docs/scaling.md lists, `torchrun --standalone --nproc_per_node=2 -m
attn_zoo.cli.ddp SUITE --cell 0 --out DIR` (as `python -m torch.distributed.run`). Runtime on 2
loaded CPU cores: ~35 s (two torchrun jobs of 10 steps each); the other tests take ~1 s.
"""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys

import pytest
import torch
from _grid_fakes import ROOT

from attn_zoo.cli.ddp import main
from attn_zoo.data.loaders import EpochSampler
from attn_zoo.grid import Store, load_suite
from attn_zoo.train.distributed import ShardedEpochSampler

# augmentation, dropout and stochastic depth off: per-image randomness differs between one and two
# processes (each rank draws its own); the data order does not
SUITE = """
[suite]
name = "ddp"

[model]
preset = "zoo_s32"
dims = [12, 24, 48, 96]
depths = [2, 2, 2, 2]
drop_path_rate = 0.0

[data]
source = "synthetic"
train_size = 64
test_size = 40
augment = "none"

[train]
steps = 10          # 4 steps per epoch: the run crosses two epoch boundaries
batch_size = 16     # the global batch: 8 per rank with two processes

[budget]
metric = "none"

[measure]
latency = false
memory = false
efficiency = false
threads = 1

[grid]
mechanism = ["swin"]
seed = [0]

[mechanisms.swin]
window = 4
"""
# float32 sums in another order (two per-rank means averaged by DDP instead of one mean) over 10 AdamW
# steps: measured 8e-8 relative after 6 steps; 1e-5 leaves room and still catches a wrong batch or order
LOSS_RTOL = 1e-5


def test_rank_slices_make_up_the_one_process_batches():
    base = EpochSampler(70, seed=3)
    one = list(base)
    ranks = [ShardedEpochSampler(EpochSampler(70, seed=3), 16, r, 4) for r in range(4)]
    shards = [list(s) for s in ranks]
    assert all(len(s) == len(r) == 16 for s, r in zip(shards, ranks))  # 4 full global batches, 4 each
    for k in range(4):  # global batch k of the one-process order = the ranks' k-th batches, in rank order
        assert one[16 * k : 16 * (k + 1)] == [i for s in shards for i in s[4 * k : 4 * (k + 1)]]
    for sampler in (base, *ranks):  # resuming mid-epoch (start in global items) keeps the alignment
        sampler.set_epoch(2, start=32)
    shards = [list(s) for s in ranks]
    assert list(base)[:32] == [i for k in range(2) for s in shards for i in s[4 * k : 4 * (k + 1)]]
    with pytest.raises(ValueError, match="batch_size 16 is not divisible by the 3 processes"):
        ShardedEpochSampler(base, 16, 0, 3)


def test_a_global_batch_the_processes_do_not_divide_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    suite = tmp_path / "ddp.toml"
    suite.write_text(SUITE)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    assert main([str(suite), "--cell", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size 16 (the global batch) is not divisible by the 3 processes" in err
    assert "--set train.batch_size=15" in err and not (tmp_path / "o").exists()


def test_cells_are_named_by_index_or_id(tmp_path, capsys):
    suite = tmp_path / "ddp.toml"
    suite.write_text(SUITE.replace('mechanism = ["swin"]', 'mechanism = ["swin", "global"]'))
    assert main([str(suite), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = [c.cell_id for c in load_suite(suite).cells]
    assert [line.split("\t")[:3] for line in lines] == [["0", ids[0], "swin"], ["1", ids[1], "global"]]
    for bad, message in (("2", "--cell 2: the suite has 2 cells (indices 0-1"), ("zzzz", "'zzzz' is no index")):
        assert main([str(suite), "--cell", bad, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err


def _torchrun(nproc: int, suite, out) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += ["-m", "attn_zoo.cli.ddp", str(suite), "--cell", "0", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"on {nproc} processes: ok" in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
def test_two_cpu_processes_reach_the_loss_of_one_with_the_same_global_batch(tmp_path):
    suite = tmp_path / "ddp.toml"
    suite.write_text(SUITE)
    _torchrun(1, suite, tmp_path / "one")
    _torchrun(2, suite, tmp_path / "two")
    cell_id = load_suite(suite).cells[0].cell_id
    one = Store(tmp_path / "one" / "ddp.sqlite").cells()
    two = Store(tmp_path / "two" / "ddp.sqlite").cells()
    assert [c["cell_id"] for c in one] == [c["cell_id"] for c in two] == [cell_id]  # `attn-zoo run`'s cell
    one, two = one[0], two[0]
    assert one["status"] == two["status"] == "ok" and two["attempts"] == 1
    a, b = one["metrics"], two["metrics"]
    assert (a["ddp_world_size"], a["ddp_rank_batch_size"], b["ddp_world_size"], b["ddp_rank_batch_size"]) == (
        1,
        16,
        2,
        8,
    )
    assert a["train_steps"] == b["train_steps"] == 10 and a["train_images"] == b["train_images"] == 160
    assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=LOSS_RTOL), (a["train_loss"], b["train_loss"])
    # evaluation over the two halves of the test set, summed: the same counts and (nearly) the same loss
    assert a["test_top1"] == b["test_top1"]
    assert math.isclose(a["test_loss"], b["test_loss"], rel_tol=LOSS_RTOL)
    assert a["params"] == b["params"]  # measured by rank 0
    with sqlite3.connect(tmp_path / "two" / "ddp.sqlite") as db:  # one writer: rank 0's one run
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


def test_the_guide_lists_the_commands_this_file_runs():
    guide = (ROOT / "docs" / "scaling.md").read_text()
    for nproc, out in ((1, "one"), (2, "two")):
        line = f"--nproc_per_node={nproc} -m attn_zoo.cli.ddp suite.toml --cell 0 --out {out}"
        assert f"torchrun --standalone {line}" in guide
