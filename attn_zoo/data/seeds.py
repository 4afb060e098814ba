"""Seeded random streams for paired runs (see :mod:`attn_zoo.train.pairing` for the design): every stream
that is not the model's own gets its own seed, derived from ``(run seed, purpose, keys)`` by
:func:`stream_seed`; :func:`seeded_rng` runs a block under that seed and restores the global generators after it."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["seeded_rng", "stream_seed"]


def stream_seed(seed: int, purpose: str, *keys: Any) -> int:
    """A 63-bit seed for the stream ``purpose`` of run ``seed`` (e.g. ``stream_seed(0, "augment", 2, 17)``)."""
    text = ":".join(str(k) for k in ("attn_zoo", purpose, seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Inside the block, Python's, NumPy's and torch's CPU generators start from ``seed``; after it, they are
    back where they were."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
