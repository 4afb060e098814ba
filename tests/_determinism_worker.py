"""A few training steps of every built-in mechanism in a tiny 32x32 harness; prints losses and accuracy as JSON.

Run as a separate process by tests/test_determinism.py: ``python tests/_determinism_worker.py THREADS``. The
numbers are printed as float hex strings, so two runs compare bit for bit.
"""

from __future__ import annotations

import json
import sys

import torch

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(THREADS)

from attn_zoo.backbone.config import MixerSpec  # noqa: E402
from attn_zoo.backbone.presets import create_model  # noqa: E402
from attn_zoo.backbone.presets.zoo import ZOO_S32_KNOBS  # noqa: E402
from attn_zoo.train.recipe import seed_everything  # noqa: E402

KNOBS = ZOO_S32_KNOBS
STEPS, BATCH = 3, 16


def run(mechanism: str) -> dict:
    seed_everything(0)
    model = create_model("zoo_s32", mixer=MixerSpec(mechanism, KNOBS[mechanism]), dims=(12, 24, 48, 96), num_classes=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        x, y = torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(0, 2, (BATCH,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item().hex())
    model.eval()
    with torch.no_grad():
        x, y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 2, (64,), generator=g)
        logits = model(x)
    return {
        "losses": losses,
        "eval_loss": torch.nn.functional.cross_entropy(logits, y).item().hex(),
        "correct": int((logits.argmax(1) == y).sum()),
        "backends": model.attention_backends(),
    }


if __name__ == "__main__":
    print(json.dumps({"threads": torch.get_num_threads(), "runs": {m: run(m) for m in KNOBS}}))
