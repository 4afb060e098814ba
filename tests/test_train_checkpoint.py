"""Checkpoints: plain-data round trip with weights_only=True, clear errors for truncated, changed or unsafe
files, and resuming that ends with the numbers of an uninterrupted run."""

from __future__ import annotations

import collections
import hashlib
import io
import json

import pytest
import torch
from test_train_recipe import spec, tiny_config

from attn_zoo.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from attn_zoo.train.recipe import TrainConfig, evaluate, fit, seed_everything
from attn_zoo.train.run import checkpoint_path_for, prepare_data, run_training

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def saved(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7, "config": {"lr": 1e-3, "name": "x"}}
    return save_checkpoint(tmp_path / "run.ckpt", state), state


def test_round_trip(saved):
    path, state = saved
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["config"] == state["config"]
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert not list(path.parent.glob("*.tmp"))  # written atomically, no leftovers


def test_truncated_checkpoint(saved):
    path, _ = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=r"run.ckpt: truncated \(\d+ of \d+ payload bytes\)"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not an attn_zoo checkpoint"):
        load_checkpoint(path)


def test_tampered_checkpoint(saved):
    path, _ = saved
    raw = bytearray(path.read_bytes())
    raw[-40] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="content does not match its sha256"):
        load_checkpoint(path)


def test_plain_torch_file_and_missing_file(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"plain.pt: not an attn_zoo checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"nothing.ckpt: cannot read"):
        load_checkpoint(tmp_path / "nothing.ckpt")


def test_payload_that_is_not_plain_data_is_refused_even_with_a_valid_hash(tmp_path):
    # a well-formed header over a payload that would run code on unpickling: weights_only refuses it
    buffer = io.BytesIO()
    torch.save({"x": collections.OrderedDict(a=1), "evil": print}, buffer)
    payload = buffer.getvalue()
    header = b"attn_zoo-checkpoint v1 bytes=%d sha256=%s\n" % (
        len(payload),
        hashlib.sha256(payload).hexdigest().encode(),
    )
    path = tmp_path / "evil.ckpt"
    path.write_bytes(header + payload)
    with pytest.raises(CheckpointError, match="refused by weights_only=True"):
        load_checkpoint(path)


def _train(cell, tmp_path, stop_at=None):
    """Train the tiny model of ``cell`` with checkpoints in tmp_path, optionally killed after ``stop_at``."""
    data = prepare_data(cell, 32)
    config = tiny_config()
    seed_everything(cell["seed"])
    from attn_zoo.backbone.harness import Backbone

    model = Backbone(config)

    def on_step(step, total, loss):
        if step == stop_at:
            raise KeyboardInterrupt  # the process dies here; only the checkpoint survives

    out = fit(
        model,
        data.train_loader(),
        TrainConfig.from_dict(cell["train"]),
        num_classes=4,
        checkpoint_path=tmp_path / "run.ckpt",
        identity={"cell": cell},
        on_step=on_step,
    )
    return out, evaluate(model, data.eval_loader("test"))


def test_resume_gives_the_numbers_of_an_uninterrupted_run(tmp_path):
    cell = spec(steps=10, checkpoint_every=3)  # 64 images / 16 = 4 steps per epoch: resumes mid-epoch
    cell["data"]["augment"] = "light"
    straight, straight_eval = _train(cell, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _train(cell, tmp_path / "b", stop_at=8)
    seed_everything(123)  # a fresh process: the global generators hold anything
    resumed, resumed_eval = _train(cell, tmp_path / "b")
    assert resumed["resumed_from_step"] == 6 and straight["resumed_from_step"] == 0
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed_eval == straight_eval
    state = load_checkpoint(tmp_path / "b" / "run.ckpt")
    assert state["step"] == 10 and state["identity"] == {"cell": json.loads(json.dumps(cell))}


def test_checkpoint_of_another_run_is_not_resumed(tmp_path):
    cell = spec(steps=2)
    _train(cell, tmp_path)
    other = spec(steps=2, lr=5e-4)
    with pytest.raises(CheckpointError, match="written for a different run configuration"):
        _train(other, tmp_path)


def test_cells_checkpoint_under_checkpoint_dir_and_resume(tmp_path):
    cell = spec(steps=4, checkpoint_dir=str(tmp_path))
    first = run_training(cell, tiny_config()).metrics
    path = checkpoint_path_for(cell, tmp_path)
    assert path.is_file() and load_checkpoint(path)["step"] == 4
    again = run_training(cell, tiny_config()).metrics  # finished: nothing left to train, same model evaluated
    assert again["resumed_from_step"] == 4 and again["test_top1"] == first["test_top1"]
