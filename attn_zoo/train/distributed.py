"""One cell on several processes: DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA).

::

    torchrun --nproc_per_node=N -m attn_zoo.train.distributed SUITE --cell CELL [--out DIR] [--set K=V ...]

``CELL`` is the cell's index in the suite (``--list`` shows them) or its id (or an unambiguous prefix). The
cell runs as under ``attn-zoo run``: the same budget matching, measurements, training and evaluation, and
its row lands in the same store (``OUT/<suite>.sqlite``, claimed, resumable, skipped when done), with the
same cell id, so a grid may run most cells with ``attn-zoo run`` and its large ones here.

The recipe's numbers do not depend on the number of processes:

- ``train.batch_size`` is the GLOBAL batch. Each of the W ranks takes ``batch_size / W`` images of every
  global batch (an error when W does not divide it): rank r gets the r-th slice of the global batch the
  one-process run draws, in the same seeded order (:class:`ShardedEpochSampler`). DDP averages the
  gradients over the ranks, so an update is the one-process update of the same global batch (up to the
  order of floating-point sums). The learning rate is used as the suite gives it: the global batch does
  not change with W, so no learning-rate scaling applies (scale ``train.lr`` in the suite yourself when you
  change ``train.batch_size``). Rows record ``ddp_world_size`` and ``ddp_rank_batch_size``.
- The training loss of each step is the mean over the ranks (an all-reduce), so ``train_loss`` and the
  divergence check are the global batch's; evaluation splits the test (and validation) set over the ranks
  and sums correct predictions, losses and counts over them.
- Randomness that is drawn per image (augmentation, dropout, stochastic depth, mixup) comes from each
  rank's own stream (rank 0 keeps the one-process stream; rank r > 0 is re-seeded), so it differs from the
  one-process run; with it off, the two runs agree to float tolerance. BatchNorm layers use SyncBatchNorm
  on CUDA; on CPU (gloo has no SyncBatchNorm) they use each rank's slice of the batch.
- Only rank 0 measures the model (counts, latency, memory, ERF), writes checkpoints and writes the row.
  Budget matching runs on rank 0 and its result is sent to the others. Every rank resumes from a
  checkpoint in the cell's artifact directory, so with several nodes ``--out`` must be on a shared file
  system.

Without torchrun (no ``WORLD_SIZE`` in the environment) the cell runs in this one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import os
import shlex
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler, Subset

from attn_zoo.errors import AttnZooError, ConfigError

TIMEOUT = datetime.timedelta(minutes=60)  # rank 0 measures the model while the others wait in a collective


class ShardedEpochSampler(Sampler[int]):
    """Rank ``rank``'s slice of every global batch of ``base`` (an EpochSampler).

    Global batch k is ``order[k*G:(k+1)*G]`` of the base order; rank r takes its items
    ``[r*b, (r+1)*b)``, b = G / world. The last, incomplete global batch is dropped (the one-process loader
    drops it too). ``set_epoch(epoch, start)`` takes ``start`` in global items, as the base does.
    """

    def __init__(self, base: Any, global_batch: int, rank: int, world_size: int):
        if global_batch % world_size:
            raise ConfigError(f"train: batch_size {global_batch} is not divisible by the {world_size} processes")
        self.base, self.global_batch, self.rank, self.world_size = base, global_batch, rank, world_size
        self.rank_batch = global_batch // world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.base.set_epoch(epoch, start)

    def __iter__(self) -> Iterator[int]:
        order = self.base.order()[self.base.start :]
        full = len(order) // self.global_batch * self.global_batch
        batches = order[:full].view(-1, self.global_batch)
        mine = batches[:, self.rank * self.rank_batch : (self.rank + 1) * self.rank_batch]
        return iter(mine.reshape(-1).tolist())

    def __len__(self) -> int:
        return len(self.base) // self.global_batch * self.rank_batch


@dataclasses.dataclass(frozen=True)
class Distributed:
    """This process's place in the job (``rank`` of ``world_size``) and the collectives the recipe uses."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def from_main(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` on rank 0, its (picklable) result on every rank."""
        if not self.active:
            return compute()
        box = [compute() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (float64)."""
        if not self.active:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def mean(self, value: torch.Tensor) -> float:
        """A scalar's mean over the ranks (a per-rank batch mean -> the global batch's mean)."""
        if not self.active:
            return value.item()
        tensor = value.detach().to(torch.float64).reshape(1)
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    def same_everywhere(self, value: int, what: str) -> None:
        """Raise on every rank when ``value`` differs between ranks (e.g. a checkpoint one node cannot see)."""
        if not self.active:
            return
        tensor = torch.tensor([value, -value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        high, low = tensor[0].item(), -tensor[1].item()
        if high != low:
            raise ConfigError(f"{what} differs between the ranks ({low:g} to {high:g}); is --out on a shared disk?")

    def decorrelate(self, step: int) -> None:
        """Rank r > 0 draws its own dropout and drop-path randomness (rank 0 keeps its stream); augmentation and
        mixup draws come from streams keyed by the run seed, image and step (:mod:`attn_zoo.train.pairing`)."""
        if not self.active or self.is_main:
            return
        from attn_zoo.train.recipe import seed_everything

        key = f"attn_zoo-ddp:{torch.initial_seed()}:{self.rank}:{step}".encode()
        seed_everything(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to train: DDP over the ranks (SyncBatchNorm on CUDA), or the model itself."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[self.device.index])
        return DistributedDataParallel(model)

    def shard_train_loader(self, loader: DataLoader, global_batch: int) -> DataLoader:
        """The same loader with this rank's slice of every global batch (see :class:`ShardedEpochSampler`)."""
        if not self.active:
            return loader
        sampler = ShardedEpochSampler(loader.sampler, global_batch, self.rank, self.world_size)
        return DataLoader(
            loader.dataset,
            batch_size=sampler.rank_batch,
            sampler=sampler,
            drop_last=True,
            num_workers=loader.num_workers,
            worker_init_fn=loader.worker_init_fn,
            generator=loader.generator,
        )

    def shard_eval_loader(self, loader: DataLoader) -> DataLoader:
        """A contiguous share of an evaluation loader's items (shares differ by at most one item)."""
        if not self.active:
            return loader
        share = np.array_split(np.arange(len(loader.dataset)), self.world_size)[self.rank]
        return DataLoader(
            Subset(loader.dataset, share.tolist()),
            batch_size=loader.batch_size,
            shuffle=False,
            num_workers=loader.num_workers,
        )

    def row(self, global_batch: int) -> dict[str, float]:
        return {"ddp_world_size": self.world_size, "ddp_rank_batch_size": global_batch // self.world_size}


def init_distributed(device: str) -> Distributed:
    """Join the torchrun job (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT`` from the
    environment): nccl for a CUDA ``device``, else gloo. Without ``WORLD_SIZE``: one process, no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)  # "cuda" in the cell's spec now means this rank's GPU
    here = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world > 1 or "WORLD_SIZE" in os.environ:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return Distributed(rank, world, local_rank, here)


# -- the command ------------------------------------------------------------------------------------------
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
        from attn_zoo.grid.cell import failure_result

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
    from attn_zoo.cli.run_cmd import parse_overrides, store_path_for
    from attn_zoo.grid.cell import run_cell
    from attn_zoo.grid.runner import run_suite
    from attn_zoo.grid.suite import load_suite
    from attn_zoo.registry import load_plugin_file

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
    if not spec.get("train"):
        raise ConfigError(f"cell {cell.cell_id} has no [train] section: nothing to train in parallel")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = int(spec["train"]["batch_size"])
    if batch % world:
        raise ConfigError(
            f"train.batch_size {batch} (the global batch) is not divisible by the {world} processes; "
            f"use a multiple of {world}, e.g. --set train.batch_size={max(world, batch // world * world)}"
        )
    device = str(spec["measure"].get("device", "cpu"))
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
        command = "torchrun ... -m attn_zoo.train.distributed " + " ".join(shlex.quote(a) for a in sys.argv[1:])
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
        prog="python -m attn_zoo.train.distributed",
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
