"""The fastest training step of the smallest harness model on this machine: the evidence behind the 0.1 ms
floor of `attn_zoo.grid.checks.MIN_STEP_S` (a step count that cannot finish in a year at that rate is refused).

    PYTHONPATH=. python scripts/step_floor.py

zoo_s32 at 32 x 32, one input channel, two classes, batch 1, AdamW, one thread; the minimum over 50 steps
after 10 warm-up steps.
"""

from __future__ import annotations

import time

import torch

from attn_zoo.backbone.config import MixerSpec
from attn_zoo.backbone.harness import Backbone
from attn_zoo.backbone.presets import resolve_config


def fastest_step_ms(mechanism: str, device: str = "cpu") -> float:
    config = resolve_config({"preset": "zoo_s32", "img_size": 32, "num_classes": 2, "in_chans": 1})
    model = Backbone(config.replace(mixer=MixerSpec(mechanism, {}))).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(1, 1, 32, 32, device=device), torch.tensor([0], device=device)
    times = []
    for _ in range(60):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[10:]) * 1e3


if __name__ == "__main__":
    torch.set_num_threads(1)
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    for device in devices:
        for mechanism in ("global", "swin"):
            print(f"{device} {mechanism}: fastest step {fastest_step_ms(mechanism, device):.2f} ms")
