"""Parameters, MACs and FLOPs with ``torch.utils.flop_counter.FlopCounterMode``.

Names say what they are: ``flops`` is what FlopCounterMode counts (2 per multiply-accumulate of matmuls,
convolutions and fused attention, nothing for norms, softmax or elementwise ops); ``macs`` is ``flops / 2``,
the quantity the papers' "FLOPs" columns report (fvcore's convention). ``attention_macs`` is the part
inside the token mixers and their per-stage context modules (their projections included).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attn_zoo.mechanisms.base import Mixer


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _mixer_module_names(model: nn.Module) -> list[str]:
    """Names of the top-level mixers and of the stage contexts (what a mechanism owns)."""
    names = []
    for name, module in model.named_modules():
        owned = isinstance(module, Mixer) or name.split(".")[-2:-1] == ["contexts"]
        if owned and not any(name.startswith(p + ".") for p in names):
            names.append(name)
    return names


@torch.no_grad()
def count_model(
    model: nn.Module,
    img_size: int | tuple[int, int],
    *,
    in_chans: int = 3,
    batch: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Count one forward pass of ``batch`` images of ``img_size``; the result is per image.

    Returns ``params``, ``flops``, ``macs``, ``attention_macs`` (and ``attention_flops``).
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    was_training = model.training
    model.eval()
    x = torch.randn(batch, in_chans, h, w, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    attention = 0
    for name in _mixer_module_names(model):
        attention += sum(counts.get(f"{root}.{name}", {}).values())
    total = counter.get_total_flops()
    return {
        "params": count_params(model),
        "flops": total // batch,
        "macs": total // (2 * batch),
        "attention_flops": attention // batch,
        "attention_macs": attention // (2 * batch),
    }


def analytic_attention_macs(model: nn.Module, img_size: int | tuple[int, int]) -> int:
    """Sum of every mixer's declared formula at the stage sizes a forward pass at ``img_size`` gives.

    Per-stage context modules (GC-ViT's global query generator) that declare ``attention_macs(H, W)`` for
    their ``(B, H, W, C)`` input count too, once per stage, as in :func:`count_model`.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    owned = [
        m
        for name, m in model.named_modules()
        if isinstance(m, Mixer) or (name.split(".")[-2:-1] == ["contexts"] and hasattr(m, "attention_macs"))
    ]
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(id(mod), tuple(args[0].shape[1:3])))
        for m in owned
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, model.config.in_chans, h, w))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(m.attention_macs(*sizes[id(m)]) for m in owned if id(m) in sizes)
