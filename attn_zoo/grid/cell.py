"""What one cell does, inside its own worker process: size the model to the budget, count, time, train.

Run as ``python -m attn_zoo.grid.cell SPEC.json RESULT.json [ARTIFACT_DIR] [--plugin FILE ...]`` (the
plugin files are loaded before the cell runs, :attr:`Cell.plugins`); the exit code and the result
file tell the runner what happened. Outcomes: ``ok``, ``diverged`` (loss not finite, with the step), ``oom``
(out of memory), ``failed`` (anything else, with the reason). Files a cell writes (e.g. an ERF map) go under
``ARTIFACT_DIR`` and are named in ``result["artifacts"]`` as ``{name: path}``; the runner records them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attn_zoo.backbone.harness import Backbone
from attn_zoo.budget import BudgetConfig, match_budget
from attn_zoo.measure import machine
from attn_zoo.measure.efficiency import training_efficiency
from attn_zoo.measure.environment import environment
from attn_zoo.measure.profile import is_oom, measure_after_training, measure_model
from attn_zoo.train.recipe import Diverged, seed_everything
from attn_zoo.train.run import data_row, prepare_data, run_training
from attn_zoo.train.spec import CellSpec

if TYPE_CHECKING:
    from attn_zoo.train.distributed import Distributed


def run_cell(
    spec: CellSpec | Mapping[str, Any],
    log=None,
    artifact_dir: str | Path | None = None,
    distributed: Distributed | None = None,
) -> dict[str, Any]:
    """Run one resolved cell and return ``{"status", "metrics", "reason", "environment", "backends", "model",
    "artifacts"}``. ``artifact_dir`` is where the cell may write files (created on first use).

    ``distributed``: this process is one rank of a DDP job (:mod:`attn_zoo.train.distributed`): rank 0
    matches the budget (the others take its model), measures and writes; every rank trains."""
    main_rank = distributed is None or distributed.is_main
    artifacts: dict[str, str] = {}
    spec = CellSpec.coerce(spec)
    measure = spec.measure
    if measure.threads:
        torch.set_num_threads(measure.threads)
    device = torch.device(measure.device)
    config = spec.model
    metrics: dict[str, float] = {}

    data = None
    if spec.data is not None and spec.train is not None:  # the data fix the classifier's classes and input channels
        data = prepare_data(spec, config.img_size)
        config = config.replace(num_classes=data.info["num_classes"], in_chans=data.info["in_chans"])
        metrics.update(data_row(data))

    budget = spec.budget or BudgetConfig()
    start = time.perf_counter()
    match = (
        match_budget(config, budget)
        if distributed is None
        else distributed.from_main(lambda: match_budget(config, budget))
    )
    config = match.config
    metrics.update(match.to_row(), budget_match_s=time.perf_counter() - start)
    if budget.strict and not match.within_tolerance:  # an unmatched model would make an unfair row
        return {"status": "failed", "reason": match.message, "metrics": metrics, "model": config.to_dict()}

    seed_everything(spec.seed)
    model = Backbone(config).to(device)
    if main_rank:
        metrics.update(measure_model(model, config, measure, device, artifact_dir=artifact_dir, artifacts=artifacts))
    backends = model.attention_backends()

    status, reason = "ok", None
    if data is not None:
        # checkpoints go with the cell
        trained = run_training(spec, config, device, data, base_dir=artifact_dir, distributed=distributed)
        metrics.update(trained.metrics)
        status, reason = trained.status, trained.reason or ("; ".join(trained.notes) or None)
        backends = trained.backends or backends
        if trained.checkpoint:
            artifacts["checkpoint"] = trained.checkpoint
        if trained.test_predictions is not None and artifact_dir is not None and main_rank:
            from attn_zoo.train.pairing import PREDICTIONS_ARTIFACT, save_predictions

            path = save_predictions(Path(artifact_dir) / f"{PREDICTIONS_ARTIFACT}.npz", *trained.test_predictions)
            artifacts[PREDICTIONS_ARTIFACT] = str(path)
        if trained.status == "ok" and main_rank:
            with machine.measuring():  # the matmul peak it compares against is a timing
                metrics.update(training_efficiency(metrics, device, measure.dtype))
        if trained.status == "ok" and trained.model is not None and main_rank:
            after = measure_after_training(
                trained.model,
                config,
                measure,
                device,
                images=data.eval_loader("test"),
                artifact_dir=artifact_dir,
                artifacts=artifacts,
            )
            metrics.update(after)
    return {
        "status": status,
        "reason": reason,
        "metrics": metrics,
        "environment": environment(device, measure.dtype),
        "backends": backends,
        "model": config.to_dict(),
        "budget_message": match.message,
        "artifacts": artifacts,
    }


def failure_result(exc: BaseException) -> dict[str, Any]:
    """The result of a cell that raised: ``diverged`` (with the step), ``oom``, or ``failed``."""
    if isinstance(exc, Diverged):
        return {"status": "diverged", "reason": str(exc), "metrics": {"diverged_step": exc.step}}
    oom = is_oom(exc)
    tail = traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]
    return {
        "status": "oom" if oom else "failed",
        "reason": f"{type(exc).__name__}: {exc}".strip()[:2000],
        "traceback": "".join(tail),
        "metrics": {},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn_zoo.grid.cell", description="Run one cell (a worker).")
    parser.add_argument("spec", type=Path, help="the cell's spec (JSON)")
    parser.add_argument("result", type=Path, help="where the result is written (JSON)")
    parser.add_argument("artifact_dir", type=Path, nargs="?", help="where the cell may write files")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE", help="a plugin file to load first")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    try:
        if args.plugin:
            from attn_zoo.registry import load_plugin_file

            for plugin in args.plugin:
                load_plugin_file(plugin)
        result = run_cell(spec, artifact_dir=args.artifact_dir)
    except BaseException as exc:  # the worker reports every failure to the runner, then exits non-zero
        result = failure_result(exc)
    tmp = args.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, args.result)  # the runner sees the whole result or none
    return 0 if result["status"] in ("ok", "diverged") else 3


if __name__ == "__main__":
    sys.exit(main())
