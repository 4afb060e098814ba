"""Training speed settings (attn_zoo.train.speed): compile decided from the measured table, the thread split for
cells side by side, the executor's ``ATTN_ZOO_CELL_JOBS``, ``compile`` kept out of stored ids while "auto", and
one parity check of the compiled training step against eager."""

from __future__ import annotations

import sys

import pytest
import torch

from attn_zoo.backbone.config import MixerSpec
from attn_zoo.backbone.presets import resolve_config
from attn_zoo.errors import ConfigError
from attn_zoo.grid.executors import LocalExecutor
from attn_zoo.grid.suite import load_suite
from attn_zoo.train import speed
from attn_zoo.train.recipe import TrainConfig
from attn_zoo.train.run import run_training

pytestmark = pytest.mark.usefixtures("one_thread")

TABLE = {
    "provenance": {},
    "devices": {
        "cpu": {"global": {"compile": True}, "swin": {"compile": False}, "ssa": {"compile": True}},
        "cuda": {"swin": {"compile": True}},
    },
}


def test_auto_follows_the_table_and_forced_settings_win():
    assert speed.use_compile("auto", "global", "cpu", TABLE)
    assert not speed.use_compile("auto", "swin", "cpu", TABLE)
    assert speed.use_compile("auto", "swin", "cuda:0", TABLE)  # by device type
    assert not speed.use_compile("auto", "msda", "cpu", TABLE)  # not measured: eager
    assert not speed.use_compile("auto", "global", "mps", TABLE)  # device not in the table: eager
    assert speed.use_compile("auto", ["global", "ssa"], "cpu", TABLE)  # a mix: every mechanism must compile
    assert not speed.use_compile("auto", ["global", "swin"], "cpu", TABLE)
    assert not speed.use_compile("auto", [], "cpu", TABLE)
    assert speed.use_compile(True, "swin", "cpu", TABLE) and not speed.use_compile(False, "global", "cpu", TABLE)
    assert speed.use_compile(TrainConfig(compile=True), "msda", "cpu", TABLE)  # a TrainConfig is read too


def test_the_shipped_table_has_its_provenance_and_every_mechanism():
    table = speed.load_compile_table()
    for key in ("command", "machine", "date", "torch"):
        assert table["provenance"][key], key
    cpu = table["devices"]["cpu"]
    assert set(cpu) == {"global", "swin", "ssa", "iwsa", "msda", "gcvit", "msa_conv"}
    for name, entry in cpu.items():
        assert isinstance(entry["compile"], bool) and entry["decision"], name
        assert speed.use_compile("auto", name, "cpu") is entry["compile"]


def test_thread_split_for_cells_side_by_side():
    assert speed.training_threads(2, 2) == 1
    assert speed.training_threads(2, 1) == 2
    assert speed.training_threads(16, 3) == 5
    assert speed.training_threads(1, 4) == 1  # never below one
    assert speed.cell_jobs({"ATTN_ZOO_CELL_JOBS": "3"}) == 3
    assert speed.cell_jobs({}) is None
    assert speed.cell_jobs({"ATTN_ZOO_CELL_JOBS": "two"}) is None
    assert speed.cell_jobs({"ATTN_ZOO_CELL_JOBS": "0"}) is None


def test_apply_training_threads_reads_the_executor_variable():
    before = torch.get_num_threads()
    try:
        row = speed.apply_training_threads(None, environ={"ATTN_ZOO_CELL_JOBS": "2"}, cores=4)
        assert row["train_threads"] == 2 == torch.get_num_threads() and row["cell_jobs"] == 2
        assert row["train_interop_threads"] == torch.get_num_interop_threads()
        row = speed.apply_training_threads(1, environ={"ATTN_ZOO_CELL_JOBS": "2"}, cores=4)  # explicit wins
        assert row["train_threads"] == 1 == torch.get_num_threads()
        torch.set_num_threads(1)
        row = speed.apply_training_threads(None, environ={}, cores=4)  # not under the executor: left as it is
        assert row == {"train_threads": 1, "train_interop_threads": torch.get_num_interop_threads(), "cell_jobs": 0}
    finally:
        torch.set_num_threads(before)


def test_the_local_executor_tells_its_workers_how_many_cells_run_at_once(tmp_path):
    script = "import os, sys, pathlib; pathlib.Path(sys.argv[3], 'jobs').write_text(os.environ['ATTN_ZOO_CELL_JOBS'])"
    executor = LocalExecutor(jobs=3, command=[sys.executable, "-c", script], work_root=tmp_path / "work")
    out = tmp_path / "artifacts"
    out.mkdir()
    token = executor.submit(load_suite("suites/quick.toml").cells[0], out)
    assert executor._running[token]["proc"].wait(timeout=60) == 0
    assert (out / "jobs").read_text() == "3"


def test_compile_stays_out_of_stored_ids_while_auto():
    assert "compile" not in TrainConfig().to_dict()
    assert TrainConfig(compile=False).to_dict()["compile"] is False
    assert TrainConfig.from_dict({"compile": True}).compile is True
    # cell ids as stored before the key existed (the same as on the commit that added it)
    assert [c.cell_id for c in load_suite("suites/quick.toml").cells][:3] == [
        "63d98d9f7c497aeb",
        "c06e41690fd4a91a",
        "6b1ea14c57dbb9ae",
    ]
    assert [c.cell_id for c in load_suite("suites/cifar10_equal_macs.toml").cells][:2] == [
        "e791201f39dbedf6",
        "61b0f127c2963f6c",
    ]


@pytest.mark.parametrize("value", ["yes", 1, 0, None, "true"])
def test_an_invalid_compile_setting_is_one_line(value):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"compile": value})
    assert str(err.value) == f'train: compile must be "auto", true or false, got {value!r}'
    assert "\n" not in str(err.value)


def test_the_compiled_step_trains_like_eager():
    """The compiled training step gives the eager loss curve within float tolerance (a short run: few steps of a
    small global-attention model; the benchmark checks every mechanism over longer runs)."""
    ok, reason = speed.compile_available()
    if not ok:
        pytest.skip(reason)
    config = resolve_config({"preset": "zoo_s32", "dims": [12, 24, 48, 96], "depths": [1, 1, 1, 1]})
    config = config.replace(mixer=MixerSpec("global", {}), num_classes=4, in_chans=1)
    spec = {
        "data": {"source": "synthetic", "train_size": 64, "test_size": 32},
        "train": {"steps": 8, "batch_size": 16},
        "seed": 0,
    }
    eager = run_training({**spec, "train": {**spec["train"], "compile": False}}, config)
    compiled = run_training({**spec, "train": {**spec["train"], "compile": True}}, config)
    assert eager.metrics["train_compiled"] == 0.0 and compiled.metrics["train_compiled"] == 1.0
    assert eager.metrics["train_threads"] == torch.get_num_threads() and "cell_jobs" in eager.metrics
    assert "train_interop_threads" in eager.metrics
    for key in ("train_loss", "test_loss"):
        assert compiled.metrics[key] == pytest.approx(eager.metrics[key], rel=1e-4, abs=1e-5), key
