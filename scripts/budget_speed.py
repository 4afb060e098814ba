"""How long the budget matcher takes: each built-in mechanism on zoo_s32, sized to a parameter target and to
a MACs target (the quick suite's 20M MACs at 32x32), one thread. Prints a Markdown table for docs/training.md.

    OMP_NUM_THREADS=1 python scripts/budget_speed.py
"""

from __future__ import annotations

import time

import torch

from attn_zoo.backbone.presets import get_preset
from attn_zoo.budget import Budget, match_budget

MECHANISMS = ("global", "swin", "ssa", "iwsa", "msda", "gcvit", "msa_conv")
BUDGETS = (Budget(metric="params", target=2e5), Budget(metric="macs", target=2e7, resolution=32))


def main() -> None:
    torch.set_num_threads(1)
    print("| mechanism | budget | achieved | error | models evaluated | seconds |")
    print("|---|---|---|---|---|---|")
    for name in MECHANISMS:
        for budget in BUDGETS:
            config = get_preset("zoo_s32").replace(mixer=name)
            start = time.perf_counter()
            match = match_budget(config, budget)
            seconds = time.perf_counter() - start
            print(
                f"| {name} | {budget.metric} {budget.target:.0e} | {match.achieved:.4g} | "
                f"{match.relative_error:+.1%} | {match.evaluations} | {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
