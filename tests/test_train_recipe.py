"""The recipe: its schedule, its budgets, determinism on CPU, divergence, mixup, and evaluation at other sizes."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import attn_zoo.registry as registry
from attn_zoo.backbone.config import MixerSpec
from attn_zoo.backbone.presets import resolve_config
from attn_zoo.errors import ConfigError, MechanismInputError
from attn_zoo.mechanisms.base import Mixer
from attn_zoo.train.recipe import (
    TRAIN_MACS_FACTOR,
    Diverged,
    TrainConfig,
    create_optimizer_and_schedule,
    fit,
)
from attn_zoo.train.run import run_training

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = {"dims": [12, 24, 48, 96], "depths": [2, 2, 2, 2], "drop_path_rate": 0.1}


def tiny_config(mechanism: str = "global", **knobs):
    config = resolve_config({"preset": "zoo_s32", **TINY})
    return config.replace(mixer=MixerSpec(mechanism, knobs), num_classes=4, in_chans=1)


def spec(seed: int = 0, **train) -> dict:
    return {
        "data": {"source": "synthetic", "train_size": 64, "test_size": 32},
        "train": {"steps": 6, "batch_size": 16, **train},
        "seed": seed,
    }


def test_schedule_warmup_then_cosine_to_min_lr():
    config = TrainConfig(steps=100, lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_fraction=0.1)
    optimizer, scheduler = create_optimizer_and_schedule(nn.Linear(2, 2), config, total=100)
    used = []
    for step in range(100):
        used.append(optimizer.param_groups[0]["lr"])  # the rate update `step` runs with
        scheduler.step_update(step + 1)
    assert used[0] == pytest.approx(1e-6)
    assert used[5] == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))  # linear warm-up
    assert used[10] == pytest.approx(1e-3)  # peak right after the warm-up
    assert used[55] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way down the cosine
    assert all(a >= b for a, b in itertools.pairwise(used[10:]))
    assert used[99] < 2e-5 and optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)  # min_lr at the end


def test_budgets_epochs_steps_and_training_macs():
    assert TrainConfig().total_steps(10) == 10  # one epoch by default
    assert TrainConfig(epochs=2.5).total_steps(10) == 25
    assert TrainConfig(steps=7).total_steps(10) == 7
    # training MACs: 3 x forward MACs per image (forward + backward), so 3 * 1e6 * 16 per step
    config = TrainConfig(train_macs=TRAIN_MACS_FACTOR * 1e6 * 16 * 40, batch_size=16)
    assert config.total_steps(10, forward_macs=1e6) == 40
    with pytest.raises(ConfigError, match=r"give one budget .*got epochs, steps"):
        TrainConfig.from_dict({"epochs": 1, "steps": 3})
    with pytest.raises(ConfigError, match="needs the model's forward MACs"):
        config.total_steps(10)
    with pytest.raises(ConfigError, match="mixup/cutmix need an even batch_size, got 15"):
        TrainConfig.from_dict({"batch_size": 15, "mixup_alpha": 0.8})
    with pytest.raises(ConfigError, match="train: unknown key 'optimizer'"):
        TrainConfig.from_dict({"optimizer": "sgd"})


def test_same_seed_same_numbers_different_seed_differs():
    runs = [run_training(spec(seed), tiny_config()).metrics for seed in (0, 0, 1)]
    keys = ("test_top1", "test_loss", "train_loss")
    assert all(runs[0][k] == runs[1][k] for k in keys)  # bit-identical on CPU
    assert runs[0]["train_loss"] != runs[2]["train_loss"]
    assert runs[0]["train_steps"] == 6 and runs[0]["train_images"] == 96
    assert runs[0]["train_macs"] == pytest.approx(3 * runs[0]["forward_macs"] * 96)


def test_training_macs_budget_sets_the_steps():
    probe = run_training(spec(steps=1), tiny_config()).metrics
    budget = 3 * probe["forward_macs"] * 16 * 5  # five steps of 16 images
    metrics = run_training(spec(steps=None, train_macs=budget), tiny_config()).metrics
    assert metrics["train_steps"] == 5 and metrics["train_macs"] == pytest.approx(budget)


def test_mixup_cutmix_and_grad_clip_run():
    metrics = run_training(spec(mixup_alpha=0.8, cutmix_alpha=1.0, grad_clip=1.0), tiny_config()).metrics
    assert metrics["train_steps"] == 6 and torch.isfinite(torch.tensor(metrics["train_loss"]))


def test_non_finite_loss_raises_diverged():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    nn.init.constant_(model[1].weight, float("nan"))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4
    )
    with pytest.raises(Diverged, match="loss became nan at step 0"):
        fit(model, loader, TrainConfig(steps=3), num_classes=2)
    result = run_training(spec(lr=1e30, warmup_fraction=0.0, min_lr=1e30, warmup_lr=1e30), tiny_config())
    assert result.status == "diverged" and "loss became" in result.reason and "diverged_step" in result.metrics


def test_val_split_and_evaluation_at_other_resolutions():
    cell = spec(eval_resolutions=[24, 32, 48])
    cell["data"]["val_size"] = 16
    result = run_training(cell, tiny_config("swin", window=4))
    m = result.metrics
    assert result.status == "ok" and not result.notes
    assert {"val_top1", "test_top1@24", "test_top1@48"} <= set(m) and m["test_top1@32"] == m["test_top1"]
    assert m["val_size"] == 16 and 0 <= m["test_top1@48"] <= 100
    cell["train"]["eval_resolution_size"] = 8  # the curve on a fixed slice of the test split
    sliced = run_training(cell, tiny_config("swin", window=4)).metrics
    assert sliced["eval_resolution_size"] == 8 and sliced["test_top1"] == m["test_top1"]
    assert all(sliced[f"test_top1@{r}"] in (0.0, 12.5, 25.0, 37.5, 50.0, 62.5, 75.0, 87.5, 100.0) for r in (24, 32, 48))


def test_a_size_the_mechanism_cannot_take_is_recorded_not_fatal(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # registrations vanish after the test

    @registry.register_mechanism("fixed_size_test")
    class FixedSize(Mixer):
        """A mixer that only takes its build-time map size (as a learned absolute table would)."""

        def __init__(self, dim: int, num_heads: int, *, feat_size: tuple[int, int] | None = None):
            super().__init__(dim, num_heads, feat_size=feat_size)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x, context=None):
            _, H, W, _ = self.check_input(x)
            if tuple(self.feat_size) != (H, W):
                raise MechanismInputError(f"fixed_size_test: built for {self.feat_size}, got {H}x{W}")
            return self.proj(x)

    result = run_training(spec(steps=2, eval_resolutions=[48]), tiny_config("fixed_size_test"))
    assert result.status == "ok" and result.metrics["eval_failed@48"] == 1.0
    assert "test_top1@48" not in result.metrics
    assert result.notes == ["eval at 48x48 failed: MechanismInputError: fixed_size_test: built for (16, 16), got 24x24"]
