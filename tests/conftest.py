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


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Generated data and caches of the tests go to a temporary cache directory, not the user's."""
    if os.environ.get("ATTN_ZOO_CACHE"):
        yield
        return
    os.environ["ATTN_ZOO_CACHE"] = str(tmp_path_factory.mktemp("attn_zoo_cache"))
    yield
    os.environ.pop("ATTN_ZOO_CACHE", None)


@pytest.fixture
def one_thread():
    """Run the test on one thread: tiny models train faster so, and far faster on a busy machine (no OpenMP
    spin-waits). Opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
