"""What one measured call is: a forward pass, a forward+backward pass, or a full training step.

Latency, memory and throughput all time or watch the same callables, built here once:

- ``fwd``: ``model.eval()``, ``torch.no_grad()``, one forward pass of a batch.
- ``fwdbwd``: ``model.train()``, forward, cross-entropy loss, backward; gradients are dropped first
  (``zero_grad(set_to_none=True)``) so every call allocates them as a training step does.
- ``train``: ``fwdbwd`` plus the optimizer step of the one recipe (timm's AdamW, lr 1e-3, wd 0.05).

Options: ``dtype`` (the model's and input's dtype), ``amp`` (autocast to bfloat16, the model stays in its
dtype), ``channels_last`` (memory format of the image and of 4-D weights: it only changes the convolutions of
the stem, downsamplers and position encodings; the harness's tokens are channels-last already) and
``compile`` (``torch.compile`` of the model; the first warm-up call pays for compilation).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attn_zoo.errors import ConfigError

MODES = ("fwd", "fwdbwd", "train")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """How a call runs: batch, input size and the numeric / compiler options."""

    batch: int = 1
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    dtype: str = "float32"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} unknown; allowed: {', '.join(DTYPES)}")
        if self.batch < 1 or self.img_size < 1:
            raise ConfigError(f"batch and img_size must be >= 1, got {self.batch}, {self.img_size}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def prepare(model: nn.Module, options: StepOptions, device: torch.device, *, copy_model: bool = True) -> nn.Module:
    """A copy of ``model`` on ``device`` in the requested dtype and memory format (the original is untouched)."""
    model = copy.deepcopy(model) if copy_model else model
    model = model.to(device=device, dtype=options.torch_dtype)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_step(model: nn.Module, mode: str, options: StepOptions, device: torch.device) -> Callable[[], None]:
    """A zero-argument callable doing one ``mode`` call of ``model`` (already prepared) on fixed random data."""
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} unknown; allowed: {', '.join(MODES)}")
    o = options
    x = torch.randn(o.batch, o.in_chans, o.img_size, o.img_size, device=device, dtype=o.torch_dtype)
    if o.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, max(o.num_classes, 1), (o.batch,), device=device)
    run = torch.compile(model) if o.compile else model

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=o.amp)

    if mode == "fwd":
        model.eval()

        def forward() -> None:
            with torch.no_grad(), autocast():
                run(x)

        return forward

    model.train()
    optimizer = _optimizer(model) if mode == "train" else None

    def step() -> None:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)
        with autocast():
            logits = run(x)
        loss = F.cross_entropy(logits.float(), y) if o.num_classes > 0 else logits.float().mean()
        loss.backward()
        if optimizer is not None:
            optimizer.step()

    return step


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    # the one recipe's optimizer (attn_zoo.train.recipe): AdamW with timm's no-decay groups
    return create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
