"""Effective receptive field (Luo et al., NeurIPS 2016): where the centre output actually looks.

For each image, the gradient of the centre position of a feature map (summed over its channels, i.e. a unit
gradient there and zero elsewhere, as in the paper) with respect to the input image; its absolute value
summed over input channels, averaged over images, gives an ``(H, W)`` map. Two scalars summarise it: the
radius (pixels, from the input point under the centre output) of the smallest disc holding 50% and 90% of
the map's mass, ``erf_r50`` and ``erf_r90``; ``erf_r50_rel`` / ``erf_r90_rel`` divide by the distance from
that point to the farthest image corner, so 1.0 means the whole image.

Untrained models show what the architecture allows; trained ones what was learned. Inputs default to
standard-normal noise (what a model sees at initialisation); pass real images for trained models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _default_features(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if hasattr(model, "forward_features"):
        return model.forward_features  # the harness: (B, C_in, H, W) -> (B, h, w, C), normalised
    raise TypeError(f"{type(model).__name__} has no forward_features; pass features=... returning (B, h, w, C)")


def erf_map(
    model: nn.Module,
    images: torch.Tensor | None = None,
    *,
    img_size: int | tuple[int, int] = 224,
    n_images: int = 8,
    in_chans: int = 3,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[np.ndarray, tuple[float, float]]:
    """``(map, centre)``: the mean absolute input gradient of the centre output, ``(H, W)``, summing to 1.

    ``features(x)`` must return ``(B, h, w, C)``; the default is ``model.forward_features``. ``images``
    ``(N, C_in, H, W)`` or, without them, ``n_images`` standard-normal images. ``centre`` is the input-space
    point under the centre output (row, column), from which radii are measured.
    """
    device = torch.device(device)
    features = features or _default_features(model)
    if images is None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        generator = torch.Generator().manual_seed(seed)
        images = torch.randn(n_images, in_chans, h, w, generator=generator)
    was_training = model.training
    model.eval()  # no dropout / drop-path noise; batch-norm in inference mode
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    try:
        for image in images:  # one at a time: batch statistics and cross-image leaks cannot enter
            x = image.unsqueeze(0).to(device).requires_grad_(True)
            out = features(x)
            if out.dim() != 4:
                raise ValueError(f"features must return (B, h, w, C), got shape {tuple(out.shape)}")
            oh, ow = out.shape[1:3]
            (grad,) = torch.autograd.grad(out[0, oh // 2, ow // 2, :].sum(), x)  # no parameter gradients
            total += grad[0].abs().sum(0).double().cpu()
    finally:
        model.train(was_training)
    H, W = images.shape[-2:]
    centre = ((oh // 2 + 0.5) * H / oh - 0.5, (ow // 2 + 0.5) * W / ow - 0.5)
    mass = total.sum()
    grid = (total / mass if mass > 0 else total).numpy()
    return grid, centre


def erf_radii(grid: np.ndarray, centre: tuple[float, float], levels: tuple[float, ...] = (0.5, 0.9)) -> list[float]:
    """Radius (pixels) of the smallest disc around ``centre`` holding each fraction of the map's mass.

    A pixel belongs to a disc of radius r when its centre is within r; for a mass concentrated on one pixel
    under ``centre`` the radius is 0.
    """
    H, W = grid.shape
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    dist = np.hypot(rows - centre[0], cols - centre[1]).ravel()
    order = np.argsort(dist, kind="stable")
    cumulative = np.cumsum(grid.ravel()[order])
    total = cumulative[-1] if len(cumulative) else 0.0
    radii = []
    for level in levels:
        if total <= 0:
            radii.append(float("nan"))
            continue
        index = int(np.searchsorted(cumulative, level * total - 1e-12 * total))
        radii.append(float(dist[order][min(index, len(order) - 1)]))
    return radii


def measure_erf(
    model: nn.Module,
    images: torch.Tensor | None = None,
    *,
    img_size: int | tuple[int, int] = 224,
    n_images: int = 8,
    in_chans: int = 3,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    save_to: str | Path | None = None,
    prefix: str = "erf",
) -> tuple[dict[str, float], np.ndarray]:
    """``({prefix}_r50, {prefix}_r90, {prefix}_r50_rel, {prefix}_r90_rel}, map)``; ``save_to`` writes the map
    as ``.npy``."""
    grid, centre = erf_map(
        model, images, img_size=img_size, n_images=n_images, in_chans=in_chans, features=features, device=device
    )
    r50, r90 = erf_radii(grid, centre)
    H, W = grid.shape
    reach = max(math.hypot(r - centre[0], c - centre[1]) for r in (0, H - 1) for c in (0, W - 1))
    metrics = {
        f"{prefix}_r50": r50,
        f"{prefix}_r90": r90,
        f"{prefix}_r50_rel": r50 / reach if reach else 0.0,
        f"{prefix}_r90_rel": r90 / reach if reach else 0.0,
    }
    if save_to is not None:
        from attn_zoo.paths import atomic_output

        with atomic_output(save_to) as tmp, open(tmp, "wb") as f:
            np.save(f, grid.astype(np.float32))
    return metrics, grid
