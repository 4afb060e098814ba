"""Speed and peak memory of neighbourhood attention: the unfold ``reference`` against ``cpu_fast``.

Shapes are DilateFormer-Tiny's stage 1 (batch 8, 56 x 56, 72 channels, 3 heads of 24). The dilations are
grouped as in MSDA: one call per head group, i.e. three calls with one head each at dilations 1, 2 and 3
(what one MSDA layer runs), at kernel 3 (the paper's) and kernel 7. Each case is timed for the forward
(under ``torch.no_grad()``) and for forward + backward (gradients of q, k and v), on 2 threads.

Peak memory is the high-water mark of tensor memory allocated during one (warmed-up) call, above what
was live before it, read from ``torch.profiler`` with ``profile_memory=True`` (every CPU allocation and
free, summed in time order). Outputs and input gradients count; the inputs do not. ``ru_maxrss`` growth
in a fresh subprocess was tried first and failed on this shared VM under memory load: it read 0 MiB for
the reference at kernel 7, which allocates over 300 MiB (the VM runs proactive reclaim, ``kdamond``,
which we take to be the reason), so RSS is not used.

Run (the acceptance target: cpu_fast >= 2x faster and with lower peak memory, both passes, k 3 and 7)::

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. /work/venv/bin/python -m pytest benchmarks/bench_neighborhood.py \\
        --benchmark-json=benchmarks/results/neighborhood-cpu.json
    /work/venv/bin/python benchmarks/bench_neighborhood.py --summary benchmarks/results/neighborhood-cpu.json

``OMP_WAIT_POLICY=PASSIVE`` matters only on a shared machine: with libgomp's default (spinning) wait,
two intra-op threads competing with other busy processes for two cores stall at every parallel region,
and the timings of both backends become noise (seen here: the same cpu_fast call varying 10x). The
policy is recorded in each benchmark's ``extra_info``, with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (--summary) without PYTHONPATH
    sys.path.insert(0, str(ROOT))

from attn_zoo.layers.backends import neighborhood_attention  # noqa: E402

THREADS = 2
BATCH, SIZE, HEAD_DIM = 8, 56, 24
DILATIONS = (1, 2, 3)  # one head per dilation group, as in MSDA with 3 heads
KERNELS = (3, 7)
BACKENDS = ("reference", "cpu_fast")
PASSES = ("forward", "forward+backward")
BORDERS = ("zero", "inward")  # zero: DilateFormer/TiC's default; inward: natten's definition (gathers)


def _inputs(requires_grad: bool, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One (q, k, v) per dilation group, each (B, 1 head, 56, 56, 24)."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for _ in DILATIONS:
        qkv = [torch.randn(BATCH, 1, SIZE, SIZE, HEAD_DIM, generator=g) for _ in range(3)]
        groups.append(tuple(t.requires_grad_(requires_grad) for t in qkv))
    return groups


def _make_step(backend: str, border: str, kernel: int, pass_: str) -> Callable[[], object]:
    """The measured work: the three MSDA head-group calls, plus their backward when asked."""
    groups = _inputs(requires_grad=pass_ != "forward")
    scale = HEAD_DIM**-0.5

    def run_groups() -> list[torch.Tensor]:
        return [
            neighborhood_attention(q, k, v, kernel, dil, scale=scale, border=border, backend=backend)
            for (q, k, v), dil in zip(groups, DILATIONS)
        ]

    if pass_ == "forward":

        def step() -> object:
            with torch.no_grad():
                return run_groups()

        return step

    grad_out = torch.randn(BATCH, 1, SIZE, SIZE, HEAD_DIM)
    leaves = [t for group in groups for t in group]

    def step_with_backward() -> object:
        outs = run_groups()
        # autograd.grad rather than .backward(): no .grad accumulation across rounds.
        return torch.autograd.grad(outs, leaves, [grad_out] * len(outs))

    return step_with_backward


def peak_memory_mib(step: Callable[[], object]) -> float:
    """High-water mark of CPU tensor memory allocated by one call of ``step`` (above what was live), MiB."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = step()
        del result
    # Each "[memory]" event is one allocation (+bytes) or free (-bytes); a running sum gives the live total.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_neighborhood_attention(benchmark, backend: str, border: str, kernel: int, pass_: str) -> None:
    torch.set_num_threads(THREADS)
    benchmark.group = f"{border} k{kernel} {pass_}"
    step = _make_step(backend, border, kernel, pass_)
    step()  # warm-up before the memory measurement (first-call initialisation is not the op's memory)
    benchmark.extra_info.update(
        {
            "backend": backend,
            "border": border,
            "kernel": kernel,
            "pass": pass_,
            "shape": f"B={BATCH}, {SIZE}x{SIZE}, 3 heads x {HEAD_DIM} (one head per dilation 1/2/3)",
            "threads": THREADS,
            "torch": torch.__version__,
            "peak_memory_mib": round(peak_memory_mib(step), 1),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
            "loadavg_1min_before": round(os.getloadavg()[0], 2),
        }
    )
    # Five rounds: the reference at k=7 forward+backward takes seconds. The two calls above warmed up.
    benchmark.pedantic(step, rounds=5, warmup_rounds=0, iterations=1)
    benchmark.extra_info["loadavg_1min_after"] = round(os.getloadavg()[0], 2)


def summarize(path: Path) -> str:
    """A markdown table of median times, speed-ups and peak memory from a pytest-benchmark JSON."""
    data = json.loads(path.read_text())
    rows: dict[tuple[str, int, str], dict[str, dict]] = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        rows.setdefault((info["border"], info["kernel"], info["pass"]), {})[info["backend"]] = {
            "median": bench["stats"]["median"] * 1e3,
            "iqr": bench["stats"]["iqr"] * 1e3,
            "min": bench["stats"]["min"] * 1e3,
            "mem": info["peak_memory_mib"],
        }
    lines = [
        "| border | kernel | pass | reference ms, median (IQR) | cpu_fast ms, median (IQR) "
        "| speed-up of medians (of mins) | reference peak MiB | cpu_fast peak MiB | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (border, kernel, pass_), by in sorted(rows.items(), key=lambda kv: (kv[0][0] != "zero", kv[0])):
        ref, fast = by["reference"], by["cpu_fast"]
        lines.append(
            f"| {border} | {kernel} | {pass_} | {ref['median']:.1f} ({ref['iqr']:.1f}) "
            f"| {fast['median']:.1f} ({fast['iqr']:.1f}) "
            f"| {ref['median'] / fast['median']:.1f}x ({ref['min'] / fast['min']:.1f}x) "
            f"| {ref['mem']:.1f} | {fast['mem']:.1f} | {ref['mem'] / fast['mem']:.1f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", type=Path, metavar="JSON", required=True)
    print(summarize(parser.parse_args().summary))
