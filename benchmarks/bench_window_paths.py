"""Which dense path is faster for window attention on CPU: ``reference`` (two batched matmuls) or ``sdpa``.

The window mechanisms (Swin, IWSA, GC-ViT local and global blocks) run attention over 49-token windows
at Swin-T's stage 1 (56 x 56, 96 channels, 3 heads) and stage 3 (14 x 14, 384 channels, 12 heads), batch 8,
window 7. Each mixer is timed alone with both paths, interleaved in every round (the order alternates), on
2 threads; forward under ``torch.no_grad()`` and forward + backward. It decided the CPU ``auto`` order of
those mechanisms before the shape table (now ``bench_auto_table.py``; docs/backends.md). Each round is one call
of each path; per-path times and the per-round ratio sdpa / reference are in ``extra_info``::

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. /work/venv/bin/python -m pytest benchmarks/bench_window_paths.py \\
        --benchmark-json=benchmarks/results/window-paths-cpu.json
    /work/venv/bin/python benchmarks/bench_window_paths.py --summary benchmarks/results/window-paths-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (--summary) without PYTHONPATH
    sys.path.insert(0, str(ROOT))

import attn_zoo  # noqa: E402

THREADS, BATCH, WINDOW = 2, 8, 7
ROUNDS = int(os.environ.get("ATTN_ZOO_BENCH_ROUNDS", "15"))
SHAPES = [(1, 56, 96, 3), (3, 14, 384, 12)]  # Swin-T at 224: (stage, side, channels, heads)
MIXERS = {
    "swin SW-MSA": ("swin", {"shift": True}),
    "iwsa": ("iwsa", {}),
    "gcvit local": ("gcvit", {}),
    "gcvit global": ("gcvit", {"global_query": True}),
}
PATHS = ("reference", "sdpa")
PASSES = ("forward", "forward+backward")


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("mixer_name", list(MIXERS))
@pytest.mark.parametrize(("stage", "side", "dim", "heads"), SHAPES, ids=[f"stage{s[0]}" for s in SHAPES])
def test_window_path(benchmark, stage: int, side: int, dim: int, heads: int, mixer_name: str, pass_: str) -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    name, knobs = MIXERS[mixer_name]
    mixer = attn_zoo.create_mechanism(name, dim, heads, feat_size=(side, side), window=WINDOW, **knobs)
    x = torch.randn(BATCH, side, side, dim, requires_grad=pass_ != "forward")
    context = torch.randn(BATCH, WINDOW, WINDOW, dim) if knobs.get("global_query") else None
    weights = torch.linspace(-1, 1, x.numel()).view_as(x)

    def step(path: str) -> None:
        mixer.set_backend(path)
        if pass_ == "forward":
            with torch.no_grad():
                mixer(x, context)
        else:
            mixer.zero_grad(set_to_none=True)
            x.grad = None
            (mixer(x, context) * weights).sum().backward()

    for path in PATHS:
        step(path)
    times: dict[str, list[float]] = {p: [] for p in PATHS}
    rounds = [0]

    def one_round() -> None:
        order = PATHS if rounds[0] % 2 == 0 else PATHS[::-1]
        rounds[0] += 1
        for path in order:
            t0 = time.perf_counter()
            step(path)
            times[path].append((time.perf_counter() - t0) * 1e3)

    load_before = os.getloadavg()[0]
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    times = {p: v[1:] for p, v in times.items()}  # drop pedantic's warm-up round
    benchmark.extra_info.update(
        stage=stage,
        mixer=mixer_name,
        shape=[BATCH, side, side, dim],
        heads=heads,
        pass_=pass_,
        threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(default)"),
        load_avg_1m=[load_before, os.getloadavg()[0]],
        wall_ms={p: [round(t, 3) for t in v] for p, v in times.items()},
        median_ms={p: statistics.median(v) for p, v in times.items()},
        median_ratio_sdpa_to_reference=statistics.median(a / b for a, b in zip(times["sdpa"], times["reference"])),
    )


def summarize(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [
        "| stage | mixer | pass | reference ms | sdpa ms | sdpa / reference (per round) | load 1m |",
        "|---|---|---|---|---|---|---|",
    ]
    for bench in data["benchmarks"]:
        e = bench["extra_info"]
        lines.append(
            f"| {e['stage']} | {e['mixer']} | {e['pass_']} | {e['median_ms']['reference']:.1f} | "
            f"{e['median_ms']['sdpa']:.1f} | {e['median_ratio_sdpa_to_reference']:.3f} | "
            f"{e['load_avg_1m'][0]:.1f}-{e['load_avg_1m'][1]:.1f} |"
        )
    info = data["machine_info"].get("attn_zoo", {})
    lines.append(
        f"\n{info.get('cpu', '?')}, {info.get('cpu_count', '?')} cores, torch {info.get('torch', '?')}, "
        f"commit {info.get('commit', '?')}, {data['datetime']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", type=Path, metavar="JSON", required=True)
    print(summarize(parser.parse_args().summary))
