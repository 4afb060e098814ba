"""Common random numbers: for one run seed, every mechanism of a grid draws the same random numbers.

A comparison between two mechanisms at seed ``s`` is *paired* when everything random except the mechanism is
the same in both runs. The global generators cannot give that: building a model draws from them, and two
mechanisms draw different amounts. So every random stream that is not the model's own gets its own seed,
derived from ``(run seed, purpose, keys)`` by :func:`~attn_zoo.data.seeds.stream_seed`:

- training order: :class:`~attn_zoo.data.loaders.EpochSampler`, keyed by ``(seed, epoch)``;
- augmentation: each training image's transform runs under :func:`~attn_zoo.data.seeds.seeded_rng` keyed by
  ``(seed, "augment", epoch, image index)``, so an image gets the same crop and flip in every mechanism;
- mixup / cutmix: each step's draw (mix or cut, lambda, box) runs under ``(seed, "mixup", step)``;
  the pairs are timm's (the batch against its reverse), hence the same too;
- evaluation: the test subset is fixed (one seed for every run) and read in order;
- initial weights: :func:`share_init` re-draws every parameter outside the mixers (stem, downsampling,
  norms, MLPs, position convolutions, head) from ``(seed, "init", module name, parameter shapes)`` with the
  module's own initialiser, so a module of the same name and shape starts from the same weights in every
  mechanism. The mixers' own parameters, and modules whose shapes differ (the budget matcher may size
  mechanisms differently), cannot be shared.

:func:`~attn_zoo.data.seeds.seeded_rng` seeds Python's, NumPy's and torch's (CPU) global generators inside the
block and restores them after it, so the draws above neither depend on nor disturb what the model draws
(dropout, drop path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from attn_zoo.data.seeds import seeded_rng, stream_seed

__all__ = [
    "PREDICTIONS_ARTIFACT",
    "load_predictions",
    "save_predictions",
    "share_init",
    "shared_modules",
]


def _init_module(module: nn.Module) -> None:
    from attn_zoo.backbone.harness import _init_weights

    module.reset_parameters()
    _init_weights(module)


def shared_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every module outside the mixers and their per-stage contexts that holds
    parameters of its own and has ``reset_parameters`` (what :func:`share_init` re-draws)."""
    from attn_zoo.mechanisms.base import Mixer

    skip: list[str] = []
    out = []
    for name, module in model.named_modules():
        if isinstance(module, Mixer) or name.endswith(".contexts") or name == "contexts":
            skip.append(name + ".")
            continue
        if any(name.startswith(prefix) for prefix in skip):
            continue
        if next(module.parameters(recurse=False), None) is None or not hasattr(module, "reset_parameters"):
            continue
        out.append((name, module))
    return out


@torch.no_grad()
def share_init(model: nn.Module, seed: int) -> list[str]:
    """Re-draw the parameters of :func:`shared_modules` from ``(seed, "init", name, shapes)``, each with its
    module's own initialiser (``reset_parameters``, then the harness's ViT init: truncated normal, std 0.02,
    for linear layers; ones and zeros for layer norms). Returns the names of the modules re-drawn."""
    names = []
    for name, module in shared_modules(model):
        shapes = ",".join("x".join(map(str, p.shape)) for p in module.parameters(recurse=False))
        with seeded_rng(stream_seed(seed, "init", name, shapes)):
            _init_module(module)
        names.append(name)
    return names


PREDICTIONS_ARTIFACT = "test_predictions"  # the artifact name under which a cell stores them


def save_predictions(path: str | Path, predicted: np.ndarray, target: np.ndarray) -> Path:
    """Write one cell's per-example test predictions compactly: ``pred`` and ``target`` (uint8 for up to 256
    classes, else int16), in the test set's order, which is the same for every cell of a suite."""
    from attn_zoo.paths import atomic_output

    path = Path(path)
    top = int(max(predicted.max(initial=0), target.max(initial=0)))
    dtype = np.uint8 if top < 256 else np.int16
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, pred=predicted.astype(dtype), target=target.astype(dtype))
    return path


def load_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, target)`` as written by :func:`save_predictions`."""
    with np.load(path) as data:
        return data["pred"].astype(np.int64), data["target"].astype(np.int64)
