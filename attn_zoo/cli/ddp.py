"""Run one cell of a suite with DistributedDataParallel: the torchrun entry point.

::

    torchrun --nproc_per_node=N -m attn_zoo.cli.ddp SUITE --cell CELL [--out DIR] [--set K=V ...]

``CELL`` is the cell's index in the suite (``--list`` shows them) or its id (or an unambiguous prefix). The
cell runs as under ``attn-zoo run``: the same budget matching, measurements, training and evaluation, and
its row lands in the same store (``OUT/<suite>.sqlite``, claimed, resumable, skipped when done), with the
same cell id, so a grid may run most cells with ``attn-zoo run`` and its large ones here. How the numbers
stay those of one process: :mod:`attn_zoo.train.distributed`.

Without torchrun (no ``WORLD_SIZE`` in the environment) the cell runs in this one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from attn_zoo.cli.run_cmd import parse_overrides, store_path_for
from attn_zoo.errors import AttnZooError, ConfigError
from attn_zoo.grid.cell import failure_result, run_cell
from attn_zoo.grid.runner import run_suite
from attn_zoo.grid.suite import load_suite
from attn_zoo.registry import load_plugin_file
from attn_zoo.train.distributed import init_distributed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="suite file (TOML)")
    p.add_argument("--cell", help="the cell: its index in the suite (see --list) or its id (or a unique prefix)")
    p.add_argument("--list", action="store_true", help="list the suite's cells (index, id, label, variant, seed)")
    p.add_argument(
        "--out", default="results", help="results directory (default: results/); the store is OUT/<suite>.sqlite"
    )
    p.add_argument("--retry-failed", action="store_true", help="run the cell again if it failed before")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a suite value")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help="load mechanisms from this file")


def pick_cell(suite: Any, wanted: str | None) -> Any:
    """The cell named by ``--cell``: an index into the suite's cells, or a cell id or unique prefix of one."""
    cells = suite.cells
    count = f"the suite has {len(cells)} cells (indices 0-{len(cells) - 1}; `--list` shows them)"
    if wanted is None:
        raise ConfigError(f"--cell is required: {count}")
    if wanted.isdigit() and len(wanted) < 8:
        index = int(wanted)
        if index >= len(cells):
            raise ConfigError(f"--cell {index}: {count}")
        return cells[index]
    matches = [c for c in cells if c.cell_id.startswith(wanted.lower())] if len(wanted) >= 4 else []
    if len(matches) != 1:
        what = "matches several cells" if matches else "is no index or cell id of this suite"
        raise ConfigError(f"--cell {wanted!r} {what}: {count}")
    return matches[0]


class _RankZeroExecutor:
    """Runs rank 0's part of the cell in a thread, so that the runner's loop keeps heartbeating the claim."""

    name = "torchrun"
    slots = 1

    def __init__(self, fn: Callable[[Any, Path], dict[str, Any]]):
        self.fn, self.thread, self.result = fn, None, None

    def submit(self, cell: Any, artifact_dir: Path) -> int:
        def run() -> None:
            try:
                self.result = self.fn(cell, artifact_dir)
            except BaseException as exc:  # the cell's failure: recorded like the local executor's
                self.result = failure_result(exc)

        self.thread = threading.Thread(target=run, name="attn_zoo-ddp-cell", daemon=True)
        self.thread.start()
        return 0

    def wait(self, timeout_s: float) -> list[tuple[int, dict[str, Any]]]:
        if self.thread is None:
            return []
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            return []
        self.thread = None
        return [(0, self.result)]

    def shutdown(self) -> None:  # a thread cannot be stopped; the process ends right after
        pass


def run_distributed(args: argparse.Namespace) -> int:
    """Run one cell of a suite on this torchrun job; rank 0 writes its row. Returns the exit code."""
    for plugin in args.plugin:
        load_plugin_file(plugin)
    suite = load_suite(args.suite, parse_overrides(args.set), plugins=tuple(args.plugin))
    if args.list:
        if int(os.environ.get("RANK", "0")) == 0:
            for i, cell in enumerate(suite.cells):
                print(f"{i}\t{cell.cell_id}\t{cell.label}\t{cell.variant or '-'}\tseed {cell.seed}")
        return 0
    cell = pick_cell(suite, args.cell)
    spec = cell.spec
    if spec.train is None:
        raise ConfigError(f"cell {cell.cell_id} has no [train] section: nothing to train in parallel")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = spec.train.batch_size
    if batch % world:
        raise ConfigError(
            f"train.batch_size {batch} (the global batch) is not divisible by the {world} processes; "
            f"use a multiple of {world}, e.g. --set train.batch_size={max(world, batch // world * world)}"
        )
    device = spec.measure.device
    if device.startswith("cuda"):
        if device != "cuda" and world > 1:
            raise ConfigError(
                f"measure.device {device!r}: under torchrun use 'cuda' (each rank takes its LOCAL_RANK GPU)"
            )
        if not torch.cuda.is_available():
            raise ConfigError(f"measure.device {device!r} but CUDA is not available here")
    store_path = store_path_for(Path(args.out), suite.name).absolute()  # absolute: ranks share artifact paths

    ctx = init_distributed(device)
    try:
        if not ctx.is_main:
            decision = ctx.from_main(lambda: None)
            if decision is not None:  # rank 0 claimed the cell; its result is rank 0's to write
                run_cell(spec, artifact_dir=decision, distributed=ctx)
            return 0

        started = []

        def cell_on_rank_zero(cell: Any, artifact_dir: Path) -> dict[str, Any]:
            started.append(True)
            ctx.from_main(lambda: str(artifact_dir))  # the others start now
            return run_cell(spec, artifact_dir=artifact_dir, distributed=ctx)

        one = dataclasses.replace(suite, cells=(cell,))
        command = "torchrun ... -m attn_zoo.cli.ddp " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        summary = run_suite(
            one,
            store_path,
            executor=_RankZeroExecutor(cell_on_rank_zero),
            retry_failed=args.retry_failed,
            progress=False,
            command=command,
        )
        if not started:
            ctx.from_main(lambda: None)  # done already (or held by another runner): the others stop
        outcome = summary.outcomes.get(cell.cell_id, "?")
        where = f"cell {cell.cell_id} ({cell.label} seed {cell.seed}) on {ctx.world_size} processes"
        print(f"{where}: {outcome}; store {store_path}")
        return 0 if outcome == "ok" else 1  # non-zero: torchrun stops ranks that still wait
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attn_zoo.cli.ddp",
        description="Train one cell of a suite with DistributedDataParallel (launch with torchrun).",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_distributed(args)
    except AttnZooError as exc:  # the same on every rank, before any process group: rank 0 says it once
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"attn-zoo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
