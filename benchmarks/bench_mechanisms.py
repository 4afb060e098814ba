"""Micro-benchmarks of every registered mechanism at fixed shapes (pytest-benchmark), apart from the tests.

Each case times one mixer call on tokens ``(1, H, W, C)`` at the shapes of the harness's stages at 224
(DilateFormer-T / zoo_224 widths, heads divisible by 3), with the mechanism's stage context when it has one
and its paper defaults for that stage. Forward under ``torch.no_grad()`` at every shape; forward + backward
(gradient of the input and the weights) at the middle one. Threads: ``ATTN_ZOO_BENCH_THREADS`` (default 2).
``extra_info`` records the backend that ran and the mixer's formula MACs, so runs can be compared as data.

Run and save (the stored run names the machine)::

    PYTHONPATH=. /work/venv/bin/python -m pytest benchmarks/bench_mechanisms.py --benchmark-only \\
        --benchmark-json=benchmarks/results/mechanisms-cpu-2core.json
    # compare a later run against it
    PYTHONPATH=. /work/venv/bin/python -m pytest benchmarks/bench_mechanisms.py --benchmark-only \\
        --benchmark-compare=benchmarks/results/mechanisms-cpu-2core.json --benchmark-compare-fail=median:25%

Mechanisms registered later (or by plugins) are included automatically.
"""

from __future__ import annotations

import os

import pytest
import torch

import attn_zoo
from attn_zoo.errors import AttnZooError

THREADS = int(os.environ.get("ATTN_ZOO_BENCH_THREADS", "2"))
# (stage, map side, channels, heads): zoo_224's stages 1-3 at a 224 input
SHAPES = {"s1-56x56x72": (0, 56, 72, 3), "s2-28x28x144": (1, 28, 144, 6), "s3-14x14x288": (2, 14, 288, 12)}
BACKWARD_SHAPE = "s2-28x28x144"


@pytest.fixture(autouse=True, scope="module")
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def build(name: str, shape: str):
    """The mixer, its stage context (or None) and a token map, for one case."""
    stage, side, dim, heads = SHAPES[shape]
    spec = attn_zoo.list_mechanisms()[name]
    torch.manual_seed(0)
    mixer = attn_zoo.create_mechanism(name, dim, heads, feat_size=(side, side), stage=stage)
    context = spec.cls.build_context(dim, heads, (side, side), spec.resolve_knobs({}, stage=stage))
    x = torch.randn(1, side, side, dim)
    return mixer, context, x


def warm_then(benchmark, call):
    """Two untimed calls (allocations, kernel selection), then pytest-benchmark's calibrated rounds."""
    for _ in range(2):
        call()
    benchmark(call)


def record(benchmark, name, shape, mixer, passes):
    side = SHAPES[shape][1]
    try:
        macs = mixer.attention_macs(side, side)
    except NotImplementedError:
        macs = None
    benchmark.extra_info.update(
        mechanism=name, shape=shape, passes=passes, backend=mixer.last_backend, attention_macs=macs, threads=THREADS
    )


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", sorted(attn_zoo.list_mechanisms()))
def test_forward(benchmark, name, shape):
    try:
        mixer, context, x = build(name, shape)
    except AttnZooError as exc:
        pytest.skip(f"{name} does not run at {shape}: {exc}")
    mixer.eval()

    def call():
        with torch.no_grad():
            return mixer(x, context(x) if context is not None else None)

    warm_then(benchmark, call)
    record(benchmark, name, shape, mixer, "forward")


@pytest.mark.parametrize("name", sorted(attn_zoo.list_mechanisms()))
def test_forward_backward(benchmark, name):
    try:
        mixer, context, x = build(name, BACKWARD_SHAPE)
    except AttnZooError as exc:
        pytest.skip(f"{name} does not run at {BACKWARD_SHAPE}: {exc}")
    x.requires_grad_(True)

    def call():
        mixer.zero_grad(set_to_none=True)
        out = mixer(x, context(x) if context is not None else None)
        out.sum().backward()

    warm_then(benchmark, call)
    record(benchmark, name, BACKWARD_SHAPE, mixer, "forward+backward")
