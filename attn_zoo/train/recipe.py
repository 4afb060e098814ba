"""The one training recipe every mechanism gets: AdamW, cosine schedule with warm-up, label smoothing.

Optimizer and scheduler come from timm's factories. The budget is given in epochs or steps. On CPU the run
is deterministic (same seed, same numbers); on GPU it uses bfloat16 autocast when ``amp`` is set. A loss that
stops being finite ends the run with :class:`Diverged`, naming the step.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import DataLoader

from attn_zoo.errors import ConfigError


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float):
        self.step, self.loss = step, loss
        super().__init__(f"loss became {loss} at step {step}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 64
    eval_batch_size: int | None = None
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    warmup_lr: float = 1e-6
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    amp: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ConfigError(f"train: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(fields))}")
        config = cls(**data)
        config.validate()
        return config

    def validate(self) -> None:
        if self.steps is None and not self.epochs > 0:
            raise ConfigError(f"train: epochs must be > 0 (or give steps), got {self.epochs!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ConfigError(f"train: steps must be a positive integer, got {self.steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"train: batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ConfigError(f"train: lr must be > 0, got {self.lr!r}")
        if not 0 <= self.warmup_fraction < 1 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("train: warmup_fraction and label_smoothing must be in [0, 1)")

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.steps if self.steps is not None else max(1, math.ceil(self.epochs * steps_per_epoch))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy on ``loader``."""
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images).float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        total += labels.numel()
    return {"top1": 100.0 * correct / max(total, 1), "loss": loss_sum / max(total, 1)}


def train(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` for the configured budget and evaluate once at the end. Seed before calling."""
    device = torch.device(device)
    model.to(device)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError("train: the training set is smaller than one batch")
    total = config.total_steps(steps_per_epoch)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=total,
        warmup_epochs=int(config.warmup_fraction * total),
        warmup_lr=config.warmup_lr,
        min_lr=config.min_lr,
        step_on_epochs=False,
        updates_per_epoch=1,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    use_amp = config.amp and device.type == "cuda"
    step, start, losses = 0, time.perf_counter(), []
    model.train()
    while step < total:
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = criterion(model(images), labels)
            value = loss.item()
            if not math.isfinite(value):
                raise Diverged(step, value)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            losses.append(value)
            if on_step is not None:
                on_step(step, total, value)
            if step >= total:
                break
    train_time = time.perf_counter() - start
    metrics = evaluate(model, val_loader, device)
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "val_top1": metrics["top1"],
        "val_loss": metrics["loss"],
        "train_loss": sum(tail) / len(tail),
        "train_steps": step,
        "train_epochs": step / steps_per_epoch,
        "train_time_s": train_time,
    }
