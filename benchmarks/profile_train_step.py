"""Where a quick-suite training step spends its time: one cell's model (sized to the suite's budget, with the
suite's knobs) trained for a few steps under ``torch.profiler`` with FLOP counting, one thread.

Prints per mechanism: the step time, the share of op time in matrix products (mm/addmm/bmm) and the GFLOP/s
they reach, the share in the fused attention kernels and in convolutions, and the largest ops. Read beside the
cells' ``train_peak_fraction`` (achieved training GFLOP/s over the n=2048 matmul peak): it says which part of
the gap is the shapes' (small matmuls) and which the ops around them (copies, softmax, normalisation)::

    OMP_NUM_THREADS=1 python benchmarks/profile_train_step.py [MECHANISM ...] [--suite suites/quick.toml]

Times under the profiler are a little longer than without it; the shares are what this is for.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from attn_zoo.backbone.harness import Backbone
from attn_zoo.budget import BudgetConfig, match_budget
from attn_zoo.grid.suite import load_suite

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
FUSED_ATTENTION = "aten::_scaled_dot_product"
CONV = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution", "aten::conv2d")


def profile_step(cell, batch: int, steps: int) -> dict:
    spec = cell.spec
    config = spec.model.replace(num_classes=2, in_chans=1)
    config = match_budget(config, spec.budget or BudgetConfig()).config
    model = Backbone(config)
    optimizer = torch.optim.AdamW(model.parameters())
    images, labels = torch.randn(batch, 1, config.img_size, config.img_size), torch.randint(0, 2, (batch,))

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(steps):
            step()
    time_us, flops = collections.Counter(), collections.Counter()
    for event in prof.key_averages():
        time_us[event.key] += event.self_cpu_time_total
        flops[event.key] += event.flops or 0
    total = sum(time_us.values())
    mm_us = sum(time_us[k] for k in MATMUL)
    return {
        "mechanism": spec.mechanism,
        "dims": config.dims,
        "step_ms": total / steps / 1e3,
        "matmul_share": mm_us / total,
        "matmul_gflops": sum(flops[k] for k in MATMUL) / mm_us / 1e3 if mm_us else 0.0,
        "attention_kernel_share": sum(v for k, v in time_us.items() if k.startswith(FUSED_ATTENTION)) / total,
        "conv_share": sum(time_us[k] for k in CONV) / total,
        "top": [(k, v / total) for k, v in time_us.most_common(5)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mechanisms", nargs="*", help="default: every mechanism of the suite")
    parser.add_argument("--suite", default="suites/quick.toml")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cells = {c.spec.mechanism: c for c in load_suite(args.suite).cells if c.spec.seed == 0}
    print("| mechanism | dims | step ms | mm/addmm/bmm share | their GFLOP/s | fused attention share | conv share |")
    print("|---|---|---|---|---|---|---|")
    rows = [profile_step(cells[m], args.batch, args.steps) for m in (args.mechanisms or cells)]
    for r in rows:
        print(
            f"| {r['mechanism']} | {'/'.join(map(str, r['dims']))} | {r['step_ms']:.0f} | {r['matmul_share']:.0%} "
            f"| {r['matmul_gflops']:.1f} | {r['attention_kernel_share']:.0%} | {r['conv_share']:.0%} |"
        )
    for r in rows:
        print(f"{r['mechanism']}: " + ", ".join(f"{k} {share:.0%}" for k, share in r["top"]))


if __name__ == "__main__":
    main()
