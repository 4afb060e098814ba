"""SSA's forward at ScalableViT-S stage-1 shapes: ours (``auto`` and each forced path) against the official class.

The official ``SSA`` is imported at run time from a checkout of Yangr116/ScalableViT given on the command line
(nothing of it is copied here); its weights are loaded into ours (``norm_act.0`` is our ``norm``) and the outputs
are checked equal before timing. Shapes: 56 x 56 tokens, C = 64, 2 heads, r_n = 8, r_c = 1.25 (ScalableViT-S
stage 1), batch 8, forward under ``no_grad``, one thread; every round times each variant once, order rotating,
and the result is the median per-round ratio to the official time (paired under the same momentary load)::

    git -C <ScalableViT checkout> show HEAD:image_classification/models/scalablevit.py > /tmp/scalablevit_official.py
    PYTHONPATH=. python benchmarks/bench_ssa_official.py --official /tmp/scalablevit_official.py --rounds 30
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import attn_zoo  # noqa: E402

DIM, HEADS, SIDE, R_N, R_C, BATCH = 64, 2, 56, 8, 1.25, 8


def load_official(path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("scalablevit_official", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # timm's register_model looks the module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.SSA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="the official scalablevit.py")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # the official constructor prints its settings
        official = load_official(args.official)(DIM, HEADS, qkv_bias=True, sr_ratio=R_N, c_ratio=R_C).eval()
    ours = attn_zoo.create_mechanism("ssa", DIM, HEADS, r_n=R_N, r_c=R_C).eval()
    state = {k.replace("norm_act.0", "norm"): v for k, v in official.state_dict().items()}
    ours.load_state_dict(state)
    x = torch.randn(BATCH, SIDE, SIDE, DIM)
    with torch.no_grad():
        want = official(x.reshape(BATCH, SIDE * SIDE, DIM), SIDE, SIDE).reshape(BATCH, SIDE, SIDE, DIM)
        torch.testing.assert_close(ours(x), want, rtol=1e-5, atol=1e-5)

    def run_ours(path: str):  # type: ignore[no-untyped-def]
        def step() -> None:
            ours.set_backend(path)
            ours(x)

        return step

    variants = {
        "official": lambda: official(x.reshape(BATCH, SIDE * SIDE, DIM), SIDE, SIDE),
        "auto": run_ours("auto"),
        "reference": run_ours("reference"),
        "sdpa": run_ours("sdpa"),
    }
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for step in variants.values():
            step()
        ours.set_backend("auto")
        ours(x)
        taken = ours.last_backend
        for r in range(args.rounds):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                variants[n]()
                times[n].append((time.perf_counter() - t0) * 1e3)
    print(f"SSA stage 1 (ScalableViT-S): {SIDE}x{SIDE}x{DIM}, heads {HEADS}, r_n {R_N}, r_c {R_C}, batch {BATCH}, ")
    print(f"1 thread, {args.rounds} rounds; auto takes {taken}\n")
    print("| variant | median ms | median per-round ratio to official |")
    print("|---|---|---|")
    for n in names:
        ratio = statistics.median(a / b for a, b in zip(times[n], times["official"]))
        print(f"| {n} | {statistics.median(times[n]):.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
