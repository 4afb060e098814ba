"""A split's transform, cut in two for decoded-once images, and its random part done on a whole batch.

:class:`SplitTransform` cuts a transform built by :func:`attn_zoo.data.loaders.build_transform` into

- the *head*: the leading steps that draw no random numbers and work on PIL images (``Resize``,
  ``CenterCrop``), applied once, when the split is decoded (:mod:`attn_zoo.data.cache`);
- the *tail*: the rest, applied to each batch.

The tail runs on a batch of uint8 tensors when it is one of the pipelines the suites use: evaluation (``ToTensor``,
``Normalize``), ``none``, ``flip`` (``RandomHorizontalFlip``) and ``light`` (``RandomCrop`` with constant zero
padding, then the flip). Each image's random numbers are drawn as the per-sample path draws them: a torch generator
seeded with the image's augmentation seed (``stream_seed(draw_seed, "augment", epoch, image)``, from
``TransformSubset._augment_seed``; the paired design of docs/training.md), ``randint`` for the crop's row, then its
column (none when the padded image is the crop's size), ``rand(1) < p`` for the flip. The pixel work is exact
(integer padding, cropping and flipping; then the same float32 division by 255, subtraction of the mean and
division by the standard deviation, element by element), so a batch equals, bit for bit, the stacked per-sample
results (tests/test_data_cache.py checks it).
Any other tail (``augment = "timm"``: random-resized crop, colour jitter, ...) runs per sample, on the decoded
image as a PIL image, under :func:`attn_zoo.data.seeds.seeded_rng` as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torchvision import transforms as T

__all__ = ["BatchTail", "SplitTransform"]

HEAD_STEPS = (T.Resize, T.CenterCrop)


@dataclasses.dataclass(frozen=True)
class BatchTail:
    """The tail as batch operations: optional random crop (size, zero padding), optional flip (probability),
    then the float conversion and normalisation (``mean`` / ``std`` None: no normalisation)."""

    crop: tuple[int, int] | None
    padding: int
    flip: float | None
    mean: torch.Tensor | None
    std: torch.Tensor | None

    @property
    def random(self) -> bool:
        return self.crop is not None or self.flip is not None

    def draws(self, seeds: Sequence[int], height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per image: crop row, crop column, flipped? -- drawn from each image's own seeded generator in the
        order and with the calls the torchvision transforms make."""
        n = len(seeds)
        top, left, flipped = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool)
        padded_h, padded_w = height + 2 * self.padding, width + 2 * self.padding
        for k, seed in enumerate(seeds):
            g = torch.Generator().manual_seed(int(seed))
            if self.crop is not None and (padded_h, padded_w) != self.crop:
                top[k] = int(torch.randint(0, padded_h - self.crop[0] + 1, size=(1,), generator=g).item())
                left[k] = int(torch.randint(0, padded_w - self.crop[1] + 1, size=(1,), generator=g).item())
            if self.flip is not None:
                flipped[k] = bool(torch.rand(1, generator=g) < self.flip)
        return top, left, flipped

    def __call__(self, images: np.ndarray, seeds: Sequence[int] | None) -> torch.Tensor:
        """``images``: (B, H, W) or (B, H, W, C) uint8; ``seeds``: each image's augmentation seed (None when
        the tail draws nothing). Returns (B, C, h, w) float32."""
        x = torch.from_numpy(np.ascontiguousarray(images))
        x = x.unsqueeze(-1) if x.ndim == 3 else x
        x = x.permute(0, 3, 1, 2)  # B, C, H, W (uint8)
        if self.random:
            if seeds is None:
                raise ValueError("a random tail needs per-image seeds")
            top, left, flipped = self.draws(seeds, x.shape[2], x.shape[3])
            if self.crop is not None:
                p = self.padding
                if p:
                    padded = x.new_zeros((*x.shape[:2], x.shape[2] + 2 * p, x.shape[3] + 2 * p))
                    padded[:, :, p : p + x.shape[2], p : p + x.shape[3]] = x
                    x = padded
                h, w = self.crop
                x = torch.stack([x[k, :, top[k] : top[k] + h, left[k] : left[k] + w] for k in range(len(x))])
            if self.flip is not None and flipped.any():
                mask = torch.from_numpy(flipped)
                x = x.clone() if not self.crop else x
                x[mask] = x[mask].flip(-1)
        out = x.contiguous().to(dtype=torch.float32).div(255)
        if self.mean is not None:
            out = out.sub_(self.mean.view(-1, 1, 1)).div_(self.std.view(-1, 1, 1))
        return out


def _batch_tail(steps: Sequence[Any]) -> BatchTail | None:
    """``steps`` as a :class:`BatchTail`, or None when they are not (a subset of) crop, flip, to-tensor,
    normalise in that order, with the settings the batch code reproduces."""
    from timm.data.transforms import MaybeToTensor

    crop, padding, flip, mean, std = None, 0, None, None, None
    rest = list(steps)
    if rest and isinstance(rest[0], T.RandomCrop):
        step = rest.pop(0)
        pad = step.padding
        if pad is None:
            pad = 0
        if isinstance(pad, Sequence) and len(set(pad)) == 1:
            pad = pad[0]
        if not isinstance(pad, int) or step.fill != 0 or step.padding_mode != "constant" or step.pad_if_needed:
            return None
        crop, padding = tuple(int(s) for s in step.size), pad
    if rest and isinstance(rest[0], T.RandomHorizontalFlip):
        flip = float(rest.pop(0).p)
    if not rest or type(rest[0]) not in (T.ToTensor, MaybeToTensor):
        return None
    rest.pop(0)
    if rest and type(rest[0]) is T.Normalize and not rest[0].inplace:
        step = rest.pop(0)
        mean, std = torch.as_tensor(step.mean, dtype=torch.float32), torch.as_tensor(step.std, dtype=torch.float32)
    if rest:
        return None
    return BatchTail(crop, padding, flip, mean, std)


class SplitTransform:
    """``transform`` cut into its deterministic PIL ``head`` (None: no such steps) and the rest: ``tail`` (a
    callable on a PIL image, for the per-sample path) and ``batch`` (:class:`BatchTail`, or None when the tail
    is not one the batch code reproduces)."""

    def __init__(self, transform: Callable[[Any], torch.Tensor]):
        steps = list(transform.transforms) if isinstance(transform, T.Compose) else [transform]
        k = 0
        while k < len(steps) and type(steps[k]) in HEAD_STEPS:
            k += 1
        self.transform = transform
        self.head = T.Compose(steps[:k]) if k else None
        self.tail = T.Compose(steps[k:])
        self.batch = _batch_tail(steps[k:])
