"""One cell on several processes: DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA).

The command that runs a suite's cell this way is :mod:`attn_zoo.cli.ddp`
(``torchrun --nproc_per_node=N -m attn_zoo.cli.ddp SUITE --cell CELL``); this module holds what the
training needs: the process group (:class:`Distributed`, :func:`init_distributed`) and the sharded sampler.

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
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler, Subset

from attn_zoo.errors import ConfigError

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
