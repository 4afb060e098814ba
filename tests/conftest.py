"""Shared fixtures. Tests run on CPU with two threads; data-, GPU- and kernel-dependent tests skip with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ATTN_ZOO_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cifar10_jpeg() -> Path:
    path = SHARED_DATA / "cifar10-jpeg"
    if not (path / "train.tar").is_file():
        pytest.skip(f"the CIFAR-10 JPEG copy is not at {path} (set ATTN_ZOO_SHARED_DATA)")
    return path


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def fresh_dispatch():
    """Forget the dispatch table's cached probes and choices before and after a test that changes what runs."""
    from attn_zoo.layers import backends

    backends.forget()
    yield
    backends.forget()
