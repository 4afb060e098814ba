"""The one training recipe every mechanism gets: AdamW, cosine schedule with linear warm-up, label smoothing.

Optimizer and scheduler come from timm's factories (``create_optimizer_v2``: AdamW without weight decay on
biases and norms; ``create_scheduler_v2``: cosine, stepped per update, warm-up from ``warmup_lr`` to ``lr``
over the first ``warmup_fraction`` of the steps, then a half cosine down to ``min_lr`` at the last step).
Mixup / CutMix are timm's ``Mixup`` with ``SoftTargetCrossEntropy``; without them the loss is cross-entropy
with label smoothing.

Budget, one of:
- ``epochs`` (default 1): passes over the training subset (rounded up to whole steps);
- ``steps``: optimizer updates;
- ``train_macs``: training compute. One training image costs 3x its forward MACs (forward, plus a backward
  of about twice the forward), so ``steps = round(train_macs / (3 * forward_macs * batch_size))``.

On CPU the run is deterministic: same seed, same thread count -> the same losses and accuracy, bit for bit
(the data order depends only on the seed, see :mod:`attn_zoo.data.loaders`). Each step's mixup / cutmix draw
comes from a generator keyed by the run seed and the step (:mod:`attn_zoo.train.pairing`), the same for
every mechanism. On GPU, ``amp`` runs forward
and loss under bfloat16 autocast. A loss that stops being finite ends the run with :class:`Diverged`.
Checkpoints (:mod:`attn_zoo.train.checkpoint`) hold everything needed to resume: an interrupted run that is
resumed ends with the same numbers as one that was not (CPU, ``num_workers = 0``).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import DataLoader

from attn_zoo.data.seeds import seeded_rng, stream_seed
from attn_zoo.errors import ConfigError
from attn_zoo.measure.machine import yield_to_measurement
from attn_zoo.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from attn_zoo.train.speed import check_compile, training_step, use_compile

if TYPE_CHECKING:
    from attn_zoo.train.distributed import Distributed

# training MACs per image = TRAIN_MACS_FACTOR x forward MACs (forward + backward ~ 2 x forward)
TRAIN_MACS_FACTOR = 3


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float):
        self.step, self.loss = step, loss
        super().__init__(f"loss became {loss} at step {step}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The recipe's settings (``[train]`` in a suite file). Give at most one of epochs, steps, train_macs."""

    epochs: float | None = None
    steps: int | None = None
    train_macs: float | None = None
    batch_size: int = 64
    eval_batch_size: int | None = None
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    warmup_lr: float = 1e-6
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    grad_clip: float | None = None
    amp: bool = True
    eval_resolutions: tuple[int, ...] = ()
    eval_resolution_size: int | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    compile: bool | str = "auto"  # torch.compile of the training step: "auto" (measured table), true, false

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ConfigError(f"train: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(fields))}")
        kwargs = dict(data)
        if isinstance(kwargs.get("eval_resolutions"), list):
            kwargs["eval_resolutions"] = tuple(kwargs["eval_resolutions"])
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> TrainConfig:
        given = [k for k in ("epochs", "steps", "train_macs") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"train: give one budget (epochs, steps or train_macs), got {', '.join(given)}")
        if self.epochs is not None and (isinstance(self.epochs, bool) or not self.epochs > 0):
            raise ConfigError(f"train: epochs must be > 0, got {self.epochs!r}")
        if self.steps is not None and (not _is_int(self.steps) or self.steps < 1):
            raise ConfigError(f"train: steps must be a positive integer, got {self.steps!r}")
        if self.train_macs is not None and (isinstance(self.train_macs, bool) or not self.train_macs > 0):
            raise ConfigError(f"train: train_macs must be > 0, got {self.train_macs!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"train: batch_size must be a positive integer, got {self.batch_size!r}")
        if self.eval_batch_size is not None and (not _is_int(self.eval_batch_size) or self.eval_batch_size < 1):
            raise ConfigError(f"train: eval_batch_size must be a positive integer, got {self.eval_batch_size!r}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr or not 0 <= self.warmup_lr <= self.lr:
            raise ConfigError(
                f"train: need lr > 0 and 0 <= min_lr, warmup_lr <= lr; got lr={self.lr}, min_lr={self.min_lr}, "
                f"warmup_lr={self.warmup_lr}"
            )
        if not self.weight_decay >= 0:
            raise ConfigError(f"train: weight_decay must be >= 0, got {self.weight_decay!r}")
        for key in ("warmup_fraction", "label_smoothing"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"train: {key} must be in [0, 1), got {getattr(self, key)!r}")
        for key in ("mixup_alpha", "cutmix_alpha"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"train: {key} must be >= 0, got {getattr(self, key)!r}")
        for key in ("mixup_prob", "mixup_switch_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"train: {key} must be in [0, 1], got {getattr(self, key)!r}")
        if self.uses_mixup and self.batch_size % 2:
            raise ConfigError(f"train: mixup/cutmix need an even batch_size, got {self.batch_size}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"train: grad_clip must be > 0 (or left out), got {self.grad_clip!r}")
        if not isinstance(self.eval_resolutions, (tuple, list)) or not all(
            _is_int(r) and r > 0 for r in self.eval_resolutions
        ):
            raise ConfigError(
                f"train: eval_resolutions must be a list of positive integers, got {self.eval_resolutions!r}"
            )
        if self.eval_resolution_size is not None and (
            not _is_int(self.eval_resolution_size) or self.eval_resolution_size < 1
        ):
            raise ConfigError(
                f"train: eval_resolution_size must be a positive integer, got {self.eval_resolution_size!r}"
            )
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise ConfigError(f"train: checkpoint_every must be a non-negative integer, got {self.checkpoint_every!r}")
        check_compile(self.compile)
        return self

    @property
    def uses_mixup(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mixup_prob > 0

    def total_steps(self, steps_per_epoch: int, forward_macs: float | None = None) -> int:
        """Optimizer updates for this budget (``forward_macs`` per image is needed for ``train_macs``)."""
        if self.steps is not None:
            return self.steps
        if self.train_macs is not None:
            if not forward_macs:
                raise ConfigError("train: a train_macs budget needs the model's forward MACs per image")
            return max(1, round(self.train_macs / (TRAIN_MACS_FACTOR * forward_macs * self.batch_size)))
        return max(1, math.ceil((self.epochs or 1.0) * steps_per_epoch))

    def warmup_steps(self, total: int) -> int:
        return min(total - 1, round(self.warmup_fraction * total)) if total > 1 else 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["eval_resolutions"] = list(self.eval_resolutions)
        if self.compile == "auto":  # the default stays out: stored cell ids from before the key are unchanged
            del out["compile"]
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (timm's Mixup and transforms draw from them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def create_optimizer_and_schedule(model: nn.Module, config: TrainConfig, total: int):
    """AdamW and the per-update cosine schedule with warm-up, from timm's factories.

    The schedule: ``warmup_lr`` at update 0, rising linearly to ``lr`` at update ``warmup``, then a half
    cosine reaching ``min_lr`` at update ``total`` (timm's ``warmup_prefix``: the cosine spans the updates
    after the warm-up).
    """
    optimizer = create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
    warmup = config.warmup_steps(total)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=total - warmup,
        warmup_epochs=warmup,
        warmup_prefix=True,
        warmup_lr=config.warmup_lr,
        min_lr=config.min_lr,
        step_on_epochs=False,
        updates_per_epoch=1,
    )
    return optimizer, scheduler


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: str | torch.device = "cpu",
    amp: bool = True,
    distributed: Distributed | None = None,
    predictions: list[torch.Tensor] | None = None,
) -> dict:
    """Top-1 accuracy (%) and mean cross-entropy (no smoothing) over ``loader``; with ``distributed``, over
    the union of every rank's ``loader`` (each rank passes its share). ``predictions``: a list that receives
    each batch's predicted classes (this rank's, in the loader's order)."""
    device = torch.device(device)
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(images)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        predicted = logits.argmax(dim=1)
        correct += (predicted == labels).sum().item()
        if predictions is not None:
            predictions.append(predicted.cpu())
        total += labels.numel()
    if distributed is not None:
        correct, total, loss_sum = distributed.sum([correct, total, loss_sum])
        correct, total = round(correct), round(total)
    return {"top1": 100.0 * correct / max(total, 1), "loss": loss_sum / max(total, 1), "count": total}


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    config: TrainConfig,
    *,
    num_classes: int,
    device: str | torch.device = "cpu",
    forward_macs: float | None = None,
    checkpoint_path: str | Path | None = None,
    identity: Mapping[str, Any] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    distributed: Distributed | None = None,
    mechanisms: Iterable[str] = (),
) -> dict[str, Any]:
    """Train ``model`` for the configured budget. Seed (``seed_everything``) before building the model.

    ``train_loader`` must sample through an :class:`~attn_zoo.data.loaders.EpochSampler` for exact resumption.
    With ``checkpoint_path``, a checkpoint there is resumed from (if ``identity`` -- the run's configuration
    -- matches the one it was written with) and one is written every ``checkpoint_every`` steps and at the
    end. Returns train_loss (mean of the last 10% of steps), train_steps, train_epochs, train_images,
    train_macs (when ``forward_macs`` is known), train_time_s, resumed_from_step and train_compiled (1 when the
    step ran through ``torch.compile``: ``compile`` true, or ``"auto"`` and the measured table lists every one
    of ``mechanisms`` on this device, see :mod:`attn_zoo.train.speed`).

    With ``distributed`` (DDP under torchrun, see :mod:`attn_zoo.train.distributed`), ``train_loader`` yields
    this rank's slice of each global batch of ``config.batch_size``; gradients are averaged over the ranks,
    each step's loss is the mean over the ranks, and only rank 0 writes checkpoints.
    """
    device = torch.device(device)
    model.to(device)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"train: the training set ({len(train_loader.dataset)} images) is smaller than one batch "
            f"({config.batch_size})"
        )
    sampler = train_loader.sampler
    total = config.total_steps(steps_per_epoch, forward_macs)
    optimizer, scheduler = create_optimizer_and_schedule(model, config, total)
    mixup = None
    if config.uses_mixup:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(
            mixup_alpha=config.mixup_alpha,
            cutmix_alpha=config.cutmix_alpha,
            prob=config.mixup_prob,
            switch_prob=config.mixup_switch_prob,
            label_smoothing=config.label_smoothing,
            num_classes=num_classes,
        )
        criterion: nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    use_amp = config.amp and device.type == "cuda"
    identity = dict(identity or {})
    step, losses, elapsed, resumed = 0, [], 0.0, 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path, map_location=device)
        if state.get("identity") != identity:
            raise CheckpointError(
                f"checkpoint {checkpoint_path}: written for a different run configuration; remove it to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses, elapsed = int(state["step"]), list(state["losses"]), float(state["elapsed_s"])
        _set_rng_state(state["rng"])
        resumed = step
    net = model
    if distributed is not None:
        distributed.same_everywhere(step, "the step resumed from")
        distributed.decorrelate(step)
        net = distributed.wrap(model)
    compiled = use_compile(config, mechanisms, device)
    train_step = training_step(net, criterion, compiled)  # the loss function is chosen once, here
    main_rank = distributed is None or distributed.is_main

    def save() -> None:
        save_checkpoint(
            checkpoint_path,
            {
                "identity": identity,
                "step": step,
                "total": total,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "losses": losses,
                "elapsed_s": elapsed + time.perf_counter() - start,
                "rng": _rng_state(),
            },
        )

    draw_seed = getattr(train_loader.dataset, "draw_seed", None)
    start = time.perf_counter()
    model.train()
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch, offset * config.batch_size)
        if hasattr(train_loader.dataset, "set_epoch"):
            train_loader.dataset.set_epoch(epoch)  # the epoch's augmentation draws (paired runs)
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            if mixup is not None and draw_seed is not None:
                with seeded_rng(stream_seed(draw_seed, "mixup", step)):
                    images, labels = mixup(images, labels)
            elif mixup is not None:
                images, labels = mixup(images, labels)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = train_step(images, labels)
            value = loss.item() if distributed is None else distributed.mean(loss)
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
            start += yield_to_measurement()  # another cell's timing has the machine: a pause, not training time
            if (
                main_rank
                and checkpoint_path is not None
                and config.checkpoint_every
                and step % config.checkpoint_every == 0
            ):
                save()
            if step >= total:
                break
    if main_rank and checkpoint_path is not None and resumed < total:
        save()
    tail = losses[-max(1, len(losses) // 10) :]
    images_seen = step * config.batch_size
    out = {
        "train_loss": sum(tail) / len(tail),
        "train_steps": step,
        "train_epochs": step / steps_per_epoch,
        "train_images": images_seen,
        "train_time_s": elapsed + time.perf_counter() - start,
        "resumed_from_step": resumed,
        "lr_final": optimizer.param_groups[0]["lr"],
        "train_compiled": float(compiled),
    }
    if forward_macs:
        out["train_macs"] = float(TRAIN_MACS_FACTOR * forward_macs * images_seen)
    return out
