"""Swin block: attn_zoo's harness ``Block`` with the ``swin`` mixer against timm's ``SwinTransformerBlock``.

Equal shapes and identical weights (timm's block's state_dict mapped onto ours; outputs checked equal
before timing). Shapes are Swin-T's stage 1 (56 x 56, 96 channels, 3 heads) and stage 3 (14 x 14, 384
channels, 12 heads) at 224, batch 8, window 7; W-MSA and SW-MSA; forward (``torch.no_grad()``) and
forward + backward (gradient of a fixed weighted sum, to the input and every parameter). 2 threads.

Variants, timed interleaved in every round (the order rotates by one each round, so none always runs
first or last), because a shared machine's load drifts within a run:

* ``timm``: ``SwinTransformerBlock`` as timm 1.0.31 ships it. Its window attention's fused (SDPA) path is
  marked experimental and off by default, so this is q k^T + bias, softmax, @ v.
* ``timm_fused``: the same block with ``attn.fused_attn = True`` (its SDPA path, bias + mask as one mask).
* ``attn_zoo``: ours with ``backend="auto"``, which on CPU is the ``reference`` path (two batched matmuls;
  ``bench_window_paths.py`` compares it with ``sdpa``).

Each pytest-benchmark round is one call of every variant; the benchmark's own statistics are therefore
of a whole round. The per-variant wall and CPU times of every round, their medians and the per-round
ratios to ``timm`` are in ``extra_info``; the summary table is made from those, with a bootstrap 95%
interval of the median per-round ratio (2000 resamples of the rounds)::

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. /work/venv/bin/python -m pytest benchmarks/bench_swin_timm.py \\
        --benchmark-json=benchmarks/results/swin-vs-timm-cpu.json
    /work/venv/bin/python benchmarks/bench_swin_timm.py --summary benchmarks/results/swin-vs-timm-cpu.json

The median of the per-round ratios compares the variants under the same momentary load; it is the number
to read on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (--summary) without PYTHONPATH
    sys.path.insert(0, str(ROOT))

import attn_zoo  # noqa: E402
from attn_zoo.backbone.harness import Block  # noqa: E402

THREADS, BATCH, WINDOW = 2, 8, 7
ROUNDS = int(os.environ.get("ATTN_ZOO_BENCH_ROUNDS", "25"))
# Swin-T at 224: (stage, feature side, channels, heads)
SHAPES = [(1, 56, 96, 3), (3, 14, 384, 12)]
VARIANTS = ("timm", "timm_fused", "attn_zoo")
PASSES = ("forward", "forward+backward")


def make_blocks(side: int, dim: int, heads: int, shift: bool) -> dict[str, torch.nn.Module]:
    """The variants with the same weights: timm's block (twice), and ours loaded from its state_dict."""
    torch.manual_seed(0)
    shift_size = WINDOW // 2 if shift else 0
    timm_block = SwinTransformerBlock(dim, (side, side), heads, window_size=WINDOW, shift_size=shift_size)
    with torch.no_grad():  # the bias table starts at trunc_normal(0.02); make it matter
        timm_block.attn.relative_position_bias_table.normal_(0, 0.5)
    fused = SwinTransformerBlock(dim, (side, side), heads, window_size=WINDOW, shift_size=shift_size)
    fused.load_state_dict(timm_block.state_dict())
    fused.attn.fused_attn = True
    state = {
        k.replace("attn.relative_position_bias_table", "mixer.rel_pos.relative_position_bias_table").replace(
            "attn.", "mixer."
        ): v
        for k, v in timm_block.state_dict().items()
        if "relative_position_index" not in k and "attn_mask" not in k
    }
    mixer = attn_zoo.create_mechanism("swin", dim, heads, feat_size=(side, side), window=WINDOW, shift=shift)
    ours = Block(dim, mixer, 4.0, 1e-5, 0.0, None, cpe=False)
    ours.load_state_dict(state, strict=True)
    return {"timm": timm_block.eval(), "timm_fused": fused.eval(), "attn_zoo": ours.eval()}


def _step(module: torch.nn.Module, x: torch.Tensor, pass_: str) -> Callable[[], None]:
    if pass_ == "forward":

        def forward() -> None:
            with torch.no_grad():
                module(x)

        return forward
    xg = x.clone().requires_grad_()
    weights = torch.linspace(-1, 1, x.numel()).view_as(x)

    def forward_backward() -> None:
        module.zero_grad(set_to_none=True)
        xg.grad = None
        (module(xg) * weights).sum().backward()

    return forward_backward


def _stats(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "iqr": q[2] - q[0], "min": min(values)}


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("shift", [False, True], ids=["W-MSA", "SW-MSA"])
@pytest.mark.parametrize(("stage", "side", "dim", "heads"), SHAPES, ids=[f"stage{s[0]}" for s in SHAPES])
def test_swin_block(benchmark, stage: int, side: int, dim: int, heads: int, shift: bool, pass_: str) -> None:
    torch.set_num_threads(THREADS)
    blocks = make_blocks(side, dim, heads, shift)
    x = torch.randn(BATCH, side, side, dim)
    with torch.no_grad():  # the same math before timing it
        expected = blocks["timm"](x)
        for name, block in blocks.items():
            torch.testing.assert_close(block(x), expected, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    steps = {name: _step(block, x, pass_) for name, block in blocks.items()}
    for step in steps.values():  # warm-up outside the timed rounds
        step()
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    rounds = [0]

    def one_round() -> None:
        r = rounds[0]
        rounds[0] += 1
        for name in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[name]()
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)

    load_before = os.getloadavg()[0]
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    n_warm = len(wall["timm"]) - ROUNDS  # pedantic's warm-up round is not kept
    wall = {k: v[n_warm:] for k, v in wall.items()}
    cpu = {k: v[n_warm:] for k, v in cpu.items()}
    ratios = {
        name: statistics.median(a / b for a, b in zip(wall[name], wall["timm"])) for name in VARIANTS if name != "timm"
    }
    cpu_ratios = {
        name: statistics.median(a / b for a, b in zip(cpu[name], cpu["timm"])) for name in VARIANTS if name != "timm"
    }
    benchmark.extra_info.update(
        stage=stage,
        shape=[BATCH, side, side, dim],
        heads=heads,
        window=WINDOW,
        msa="SW-MSA" if shift else "W-MSA",
        pass_=pass_,
        threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(default)"),
        load_avg_1m=[load_before, os.getloadavg()[0]],
        attn_zoo_auto_backend=blocks["attn_zoo"].mixer.last_backend,
        wall_ms={k: [round(t, 3) for t in v] for k, v in wall.items()},
        cpu_ms={k: [round(t, 3) for t in v] for k, v in cpu.items()},
        wall_stats={k: _stats(v) for k, v in wall.items()},
        cpu_stats={k: _stats(v) for k, v in cpu.items()},
        median_ratio_to_timm=ratios,
        median_cpu_ratio_to_timm=cpu_ratios,
    )


def bootstrap_median_ci(ratios: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``ratios``."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.tensor(ratios)
    picks = torch.randint(len(ratios), (resamples, len(ratios)), generator=gen)
    medians = values[picks].median(dim=1).values.sort().values
    return float(medians[int(0.025 * resamples)]), float(medians[int(0.975 * resamples) - 1])


def summarize(path: Path) -> str:
    """A markdown table from a saved run: per-variant wall medians (IQR) and the per-round ratios to timm."""
    data = json.loads(path.read_text())
    head = "| stage | attention | pass | " + " | ".join(f"{v} ms" for v in VARIANTS)
    head += " | attn_zoo / timm per round: median [95% CI] | same, CPU time | load 1m |"
    lines = [head, "|" + "---|" * (len(VARIANTS) + 6)]
    for bench in data["benchmarks"]:
        e = bench["extra_info"]
        cells = [f"{e['wall_stats'][v]['median']:.1f} ({e['wall_stats'][v]['iqr']:.1f})" for v in VARIANTS]
        ratio_cells = []
        for key in ("wall_ms", "cpu_ms"):
            ours, timm = e[key]["attn_zoo"], e[key]["timm"]
            ratios = [a / b for a, b in zip(ours, timm)]
            lo, hi = bootstrap_median_ci(ratios)
            ratio_cells.append(f"{statistics.median(ratios):.3f} [{lo:.3f}, {hi:.3f}]")
        lines.append(
            f"| {e['stage']} | {e['msa']} | {e['pass_']} | "
            + " | ".join(cells + ratio_cells)
            + f" | {e['load_avg_1m'][0]:.1f}-{e['load_avg_1m'][1]:.1f} |"
        )
    machine = data["machine_info"]
    info = machine.get("attn_zoo", {})
    lines.append(
        f"\n{info.get('cpu', machine.get('cpu', {}).get('brand_raw', '?'))}, {info.get('cpu_count', '?')} cores, "
        f"torch {info.get('torch', '?')}, timm {info.get('timm', '?')}, commit {info.get('commit', '?')}, "
        f"{data['datetime']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", type=Path, metavar="JSON", required=True)
    print(summarize(parser.parse_args().summary))
