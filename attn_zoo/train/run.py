"""One cell's training, from its resolved spec: data, model, fit, evaluation (also at other resolutions).

The grid's worker calls :func:`prepare_data` (before sizing the model: the data fix ``num_classes`` and
``in_chans``) and :func:`run_training`. Every number lands in ``TrainResult.metrics`` (one row per seed;
the grid aggregates seeds); anything worth a sentence (a resolution the model cannot take) goes to
``notes``.

Metrics: ``test_top1`` / ``test_loss`` (the reported number: the source's test split), ``val_top1`` /
``val_loss`` (only with ``val_size``), ``test_top1@R`` / ``test_loss@R`` for each ``eval_resolutions`` entry
R (``eval_failed@R = 1`` with a note when the model cannot run at R; with ``eval_resolution_size`` every
R, the training size included, is measured on the same class-balanced slice of the test split), the
training metrics of :func:`~attn_zoo.train.recipe.fit`, ``forward_macs`` (per image at the training size),
and the data sizes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from attn_zoo.backbone.config import ModelConfig
from attn_zoo.data.config import DataConfig
from attn_zoo.data.loaders import Data, create_data
from attn_zoo.errors import AttnZooError
from attn_zoo.train.pairing import share_init
from attn_zoo.train.recipe import Diverged, TrainConfig, evaluate, fit, seed_everything
from attn_zoo.train.spec import CellSpec, plain_spec
from attn_zoo.train.speed import apply_training_threads

if TYPE_CHECKING:
    from attn_zoo.train.distributed import Distributed


@dataclasses.dataclass
class TrainResult:
    status: str  # "ok" or "diverged"
    metrics: dict[str, float]
    notes: list[str]
    reason: str | None = None
    backends: list[str] = dataclasses.field(default_factory=list)  # attention paths the trained model took
    checkpoint: str | None = None  # where the final checkpoint is, when checkpoint_dir is set
    model: Any = None  # the trained model (for measurements after training, e.g. its ERF)
    # per test example, in the test set's order: (predicted class, true class); None under DDP
    test_predictions: tuple[Any, Any] | None = None


def prepare_data(spec: CellSpec | Mapping[str, Any], img_size: int) -> Data:
    """The datasets of a cell (``spec.data``, ``spec.train``, ``spec.seed``) at ``img_size``."""
    spec = CellSpec.coerce(spec)
    data_cfg = (spec.data or DataConfig()).validate()
    train_cfg = (spec.train or TrainConfig()).validate()
    return create_data(
        data_cfg,
        img_size=img_size,
        batch_size=train_cfg.batch_size,
        seed=spec.seed,
        eval_batch_size=train_cfg.eval_batch_size,
    )


def data_row(data: Data) -> dict[str, float]:
    return {
        "train_size": data.info["train_size"],
        "val_size": data.info["val_size"],
        "test_size": data.info["test_size"],
        "num_classes": data.info["num_classes"],
    }


def checkpoint_path_for(spec: CellSpec | Mapping[str, Any], directory: str | Path) -> Path:
    """``DIR/<sha256 of the spec's plain form, 16 hex>.ckpt``: a changed cell never resumes another's checkpoint."""
    key = hashlib.sha256(json.dumps(plain_spec(spec), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(directory).expanduser() / f"{key}.ckpt"


ESTIMATE_AFTER_STEPS = 5  # steps timed (after the first, which warms up) before the duration is estimated
YEAR_S = 365 * 24 * 3600  # the longest a training may take (grid.checks refuses longer ones before they start)
ALLOW_LONG_ENV = "ATTN_ZOO_ALLOW_LONG"  # set by `attn-zoo run --allow-long`


def progress_reporter(after: int = ESTIMATE_AFTER_STEPS):
    """An ``on_step`` for :func:`fit`: after the first step plus ``after`` more, estimate the whole training's
    duration; write it to ``$ATTN_ZOO_PROGRESS_FILE`` (the local executor's runner prints it), and stop a
    training that would run past a year unless ``$ATTN_ZOO_ALLOW_LONG`` is set."""
    import os
    import time

    from attn_zoo.errors import ConfigError

    state: dict[str, float] = {}

    def on_step(step: int, total: int, _loss: float) -> None:
        if "done" in state:
            return
        if "first" not in state:  # the first step (or the one after a resume) includes warm-up
            state["first"], state["t0"] = step, time.perf_counter()
            return
        timed = step - state["first"]
        if timed < after and step < total:
            return
        state["done"] = 1.0
        per_step = (time.perf_counter() - state["t0"]) / max(timed, 1)
        estimate = per_step * total
        report = {"steps_done": int(timed), "total_steps": total, "seconds_per_step": per_step, "estimated_s": estimate}
        path = os.environ.get("ATTN_ZOO_PROGRESS_FILE")
        if path:
            import contextlib

            from attn_zoo.paths import write_text

            with contextlib.suppress(OSError):  # a report the runner may miss must not fail the training
                write_text(path, json.dumps(report))
        if estimate > YEAR_S and not os.environ.get(ALLOW_LONG_ENV):
            raise ConfigError(
                f"train: {total} steps at {per_step:.3g} s a step (measured) take {estimate / YEAR_S:.3g} years; "
                "allowed: at most one year (pass --allow-long to insist)"
            )

    return on_step


def run_training(
    spec: CellSpec | Mapping[str, Any],
    config: ModelConfig,
    device: str | torch.device = "cpu",
    data: Data | None = None,
    base_dir: str | Path | None = None,
    distributed: Distributed | None = None,
) -> TrainResult:
    """Train the model ``config`` (already sized to the budget) on the cell's data; evaluate it.

    A relative ``train.checkpoint_dir`` is taken relative to ``base_dir`` when given (the grid passes the
    cell's artifact directory), else to the working directory. ``distributed``: this process is one rank of
    a DDP job (:mod:`attn_zoo.train.distributed`); the data are sharded, metrics reduced over the ranks.
    """
    from attn_zoo.backbone.harness import Backbone
    from attn_zoo.budget import budget_metric

    device = torch.device(device)
    plain = plain_spec(spec)  # what checkpoints are keyed by
    spec = CellSpec.coerce(spec)
    train_cfg = (spec.train or TrainConfig()).validate()
    data = data or prepare_data(spec, config.img_size)
    forward_macs = budget_metric(config, "macs")
    seed_everything(spec.seed)
    model = Backbone(config)
    share_init(model, spec.seed)  # shared modules start alike across mechanisms (paired runs)
    checkpoint = None
    if train_cfg.checkpoint_dir:
        directory = Path(train_cfg.checkpoint_dir).expanduser()
        checkpoint = checkpoint_path_for(plain, Path(base_dir) / directory if base_dir else directory)
    metrics: dict[str, float] = {**data_row(data), "forward_macs": forward_macs}
    # training threads: [measure] threads when given, else floor(cores / cells at once) under the local executor
    metrics.update(apply_training_threads(spec.measure.threads if spec.measure else None))
    train_loader, share = data.train_loader(), (lambda loader: loader)
    if distributed is not None:
        train_loader = distributed.shard_train_loader(train_loader, train_cfg.batch_size)
        share = distributed.shard_eval_loader
        metrics.update(distributed.row(train_cfg.batch_size))
    try:
        metrics.update(
            fit(
                model,
                train_loader,
                train_cfg,
                num_classes=data.info["num_classes"],
                device=device,
                forward_macs=forward_macs,
                checkpoint_path=checkpoint,
                identity={"spec": json.loads(json.dumps(plain, default=str)), "model": config.to_dict()},
                on_step=progress_reporter() if distributed is None or distributed.is_main else None,
                distributed=distributed,
                mechanisms=config.mechanisms(),
            )
        )
    except Diverged as exc:
        metrics["diverged_step"] = exc.step
        return TrainResult("diverged", metrics, [], str(exc))
    amp = train_cfg.amp
    predicted: list[torch.Tensor] | None = [] if distributed is None else None
    test = evaluate(model, share(data.eval_loader("test")), device, amp, distributed, predictions=predicted)
    metrics.update(test_top1=test["top1"], test_loss=test["loss"])
    if data.val_set is not None:
        val = evaluate(model, share(data.eval_loader("val")), device, amp, distributed)
        metrics.update(val_top1=val["top1"], val_loss=val["loss"])
    notes = []
    subset = train_cfg.eval_resolution_size
    if train_cfg.eval_resolutions and subset is not None and subset < data.info["test_size"]:
        metrics["eval_resolution_size"] = subset
    for res in train_cfg.eval_resolutions:
        if res == config.img_size and (subset is None or subset >= data.info["test_size"]):
            metrics.update({f"test_top1@{res}": test["top1"], f"test_loss@{res}": test["loss"]})
            continue
        try:
            out = evaluate(model, share(data.eval_loader("test", res, size=subset)), device, amp, distributed)
        except (AttnZooError, RuntimeError, ValueError) as exc:  # the mechanism cannot take this size
            metrics[f"eval_failed@{res}"] = 1.0
            notes.append(f"eval at {res}x{res} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        metrics.update({f"test_top1@{res}": out["top1"], f"test_loss@{res}": out["loss"]})
    backends = model.attention_backends()
    pairs = (torch.cat(predicted).numpy(), np.asarray(data.test_set.targets)) if predicted else None
    return TrainResult(
        "ok", metrics, notes, None, backends, str(checkpoint) if checkpoint else None, model, test_predictions=pairs
    )
