"""Anchors on one GPU: timm's models against ours with the same weights, natten against our MSDA path.

1. ``timm``: timm's ``swin_tiny_patch4_window7_224`` and ``gcvit_xxtiny`` (random weights, ``pretrained=False``)
   against our ``swin_t`` and ``gcvit_xxt`` with timm's weights mapped onto them
   (:mod:`attn_zoo.backbone.timm_weights`); the outputs are checked equal (float32, eval) before timing.
   Variants: ``timm`` as shipped, ``timm_fused`` (every module with timm's ``fused_attn`` switch turned on,
   i.e. its SDPA path) and ``attn_zoo`` (``backend="auto"``). Passes: ``forward`` (eval, ``no_grad``) and
   ``train`` (train mode: forward, cross-entropy, backward, SGD step), float32 and bf16 autocast.
2. ``natten``: one MSDA layer of DilateFormer-T's stage 1 (56 x 56, one head of 24 channels per dilation
   group, dilations 1, 2, 3, kernel 3, natten's ``inward`` border; again with 32 channels, since natten's flex
   backend takes only power-of-two head sizes): natten's ``na2d`` (its flex backend, compiled
   with ``torch.compile``, and eager) against ``neighborhood_attention`` with ``cpu_fast`` and ``reference``;
   forward and forward + backward (gradients of q, k, v); outputs checked equal first.

Timing: CUDA events (:func:`attn_zoo.measure.latency.measure_latency`); ``--rounds`` rounds, each timing
``--calls`` calls of every variant in an order rotated per round; the median over all calls, and the median
per-round ratio to the first variant. Writes JSON (``--out``) and prints a Markdown table::

    python benchmarks/gpu_anchors.py --out anchors.json            # on a CUDA machine
    python benchmarks/gpu_anchors.py --device cpu --batch 1 --rounds 1 --calls 1 --out /tmp/a.json  # plumbing
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attn_zoo import create_model  # noqa: E402
from attn_zoo.backbone.timm_weights import gcvit_from_timm, swin_from_timm  # noqa: E402
from attn_zoo.layers.backends import neighborhood_attention  # noqa: E402
from attn_zoo.measure.latency import measure_latency  # noqa: E402

PAIRS = [("swin_tiny_patch4_window7_224", "swin_t", swin_from_timm), ("gcvit_xxtiny", "gcvit_xxt", gcvit_from_timm)]


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def time_variants(fns: dict[str, Callable[[], object]], device, rounds: int, calls: int) -> dict[str, object]:
    """Median ms per variant over all rounds, and the median per-round ratio to the first variant."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            lat = measure_latency(fns[name], device=device, warmup=3 if r == 0 else 1, repeats=calls)
            per_round[name].append(lat["median_ms"])
            times[name].append(lat["median_ms"])
    first = names[0]
    return {
        name: {
            "median_ms": statistics.median(times[name]),
            "ratio_to_" + first: statistics.median(a / b for a, b in zip(per_round[name], per_round[first])),
            "round_medians_ms": per_round[name],
        }
        for name in names
    }


def timm_anchor(timm_name: str, preset: str, convert, args, device: torch.device) -> dict[str, object]:
    import timm

    torch.manual_seed(0)
    theirs = timm.create_model(timm_name, pretrained=False).to(device).eval()
    ours = create_model(preset).to(device).eval()
    ours.load_state_dict(convert(theirs.state_dict()), strict=True)
    fused = timm.create_model(timm_name, pretrained=False).to(device).eval()
    fused.load_state_dict(theirs.state_dict())
    switched = 0
    for m in fused.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn, switched = True, switched + 1
    x = torch.randn(2, 3, 224, 224, device=device)
    with torch.no_grad():
        want = theirs(x)
        diffs = {n: (m(x) - want).abs().max().item() for n, m in (("attn_zoo", ours), ("timm_fused", fused))}
    result: dict[str, object] = {
        "timm": timm.__version__,
        "max_abs_diff_to_timm": diffs,
        "max_abs_timm_output": want.abs().max().item(),
        "timm_fused_modules": switched,
        "paths": sorted({m.last_backend for m in ours.mixers() if m.last_backend}),
    }
    models = {"timm": theirs, "timm_fused": fused, "attn_zoo": ours}
    xb = torch.randn(args.batch, 3, 224, 224, device=device)
    yb = torch.randint(0, 1000, (args.batch,), device=device)
    for dtype in args.dtypes:
        for pass_ in ("forward", "train"):
            fns = {}
            for name, model in models.items():
                if pass_ == "forward":

                    def fn(model=model, dtype=dtype):
                        with torch.no_grad(), _autocast(device, dtype):
                            model.eval()(xb)

                else:
                    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

                    def fn(model=model, opt=opt, dtype=dtype):
                        model.train()
                        opt.zero_grad(set_to_none=True)
                        with _autocast(device, dtype):
                            loss = F.cross_entropy(model(xb), yb)
                        loss.backward()
                        opt.step()

                fns[name] = fn
            timed = time_variants(fns, device, args.rounds, args.calls)
            for stats in timed.values():
                stats["img_s"] = 1e3 * args.batch / stats["median_ms"]
            result[f"{dtype}/{pass_}"] = timed
    return result


def _layer(call: Callable, groups: list, dilations: tuple[int, ...], grad: bool) -> Callable[[], list]:
    """One MSDA layer: ``call(q_k_v, dilation)`` per head group, then (``grad``) backward of every output."""

    def run() -> list:
        outs = [call(g, d) for g, d in zip(groups, dilations)]
        if grad:
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        return outs

    return run


def natten_anchor(args, device: torch.device, save: Callable[[dict], None] = lambda result: None) -> dict[str, object]:
    """``save(result)`` is called after each case, so a run stopped from outside keeps the cases done."""
    import natten

    result: dict[str, object] = {"natten": natten.__version__, "has_libnatten": bool(natten.HAS_LIBNATTEN)}
    size, kernel, dilations = 56, (3, 3), (1, 2, 3)
    torch.manual_seed(0)
    natten.allow_flex_compile(True, backprop=True)
    precisions = (("float32", torch.float32), ("bf16", torch.bfloat16))
    cases = [(d, n, t) for d in args.natten_head_dims for n, t in precisions]
    for head_dim, dtype_name, dtype in cases:
        if dtype_name not in args.dtypes:
            continue
        scale = head_dim**-0.5
        # ours: (B, heads, H, W, d); natten: (B, H, W, heads, d)
        groups = [[torch.randn(args.batch, 1, size, size, head_dim, device=device, dtype=dtype) for _ in range(3)]]
        groups += [[t.clone() for t in groups[0]] for _ in dilations[1:]]
        nat = [[t.permute(0, 2, 3, 1, 4).contiguous() for t in g] for g in groups]

        def ours(backend: str, grad: bool, groups=groups, scale=scale):
            return _layer(
                lambda qkv, r: neighborhood_attention(
                    *qkv, kernel, (r, r), scale=scale, border="inward", backend=backend
                ),
                groups,
                dilations,
                grad,
            )

        def theirs(compile_: bool, grad: bool, nat=nat, scale=scale):
            return _layer(
                lambda qkv, r: natten.na2d(
                    *qkv, kernel, dilation=r, scale=scale, backend="flex-fna", torch_compile=compile_
                ),
                nat,
                dilations,
                grad,
            )

        label_dtype = f"{dtype_name} d{head_dim}"
        for pass_, grad in (("forward", False), ("forward+backward", True)):
            for g in (*groups, *nat):
                for t in g:
                    t.requires_grad_(grad)
            fns = {"cpu_fast": ours("cpu_fast", grad), "reference": ours("reference", grad)}
            for label, compile_ in (("natten_flex_compiled", True), ("natten_flex_eager", False)):
                try:
                    with torch.no_grad():
                        got = theirs(compile_, False)()
                        want = ours("cpu_fast", False)()
                    diff = max((a.permute(0, 3, 1, 2, 4) - b).abs().max().item() for a, b in zip(got, want))
                    result[f"{label_dtype}/{label}/max_abs_diff_to_cpu_fast"] = diff
                    fns[label] = theirs(compile_, grad)
                except Exception as exc:  # natten may have no kernel for this case here: say so, time the rest
                    result[f"{label_dtype}/{pass_}/{label}/error"] = f"{type(exc).__name__}: {exc}"[:500]
            timed = {}
            try:
                timed = time_variants(fns, device, args.rounds, args.calls)
            except Exception as exc:
                result[f"{label_dtype}/{pass_}/error"] = f"{type(exc).__name__}: {exc}"[:500]
            result[f"{label_dtype}/{pass_}"] = timed
            save(result)
    return result


def markdown(results: dict[str, object]) -> str:
    lines = ["| anchor | dtype | pass | variant | median ms | img/s | ratio to first (median per round) |"]
    lines.append("|---|---|---|---|---|---|---|")
    for anchor, res in results.items():
        if not isinstance(res, dict):
            continue
        for key, timed in res.items():
            if key.count("/") != 1 or not isinstance(timed, dict):
                continue
            dtype, pass_ = key.split("/")
            for variant, s in timed.items():
                ratio = next((v for k, v in s.items() if k.startswith("ratio_to_")), None)
                img_s = f"{s['img_s']:.0f}" if "img_s" in s else "-"
                lines.append(
                    f"| {anchor} | {dtype} | {pass_} | {variant} | {s['median_ms']:.2f} | {img_s} | {ratio:.3f} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=5, help="timed calls per variant per round")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bf16"], choices=["float32", "bf16"])
    p.add_argument("--parts", nargs="+", default=["timm", "natten"], choices=["timm", "natten"])
    p.add_argument("--natten-head-dims", type=int, nargs="+", default=[24, 32], help="head sizes of the natten part")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    results: dict[str, object] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    results.update(torch=torch.__version__, batch=args.batch, rounds=args.rounds, calls=args.calls)
    jobs: list[tuple[str, Callable[[], dict[str, object]]]] = []
    if "timm" in args.parts:
        for timm_name, preset, convert in PAIRS:
            jobs.append(
                (f"{timm_name} vs {preset}", lambda a=(timm_name, preset, convert): timm_anchor(*a, args, device))
            )
    if "natten" in args.parts:
        name = "natten vs msda (56x56, k 3, r 1-3)"

        def save(result: dict, name: str = name) -> None:
            Path(args.out).write_text(json.dumps({**results, name: result}, indent=1, default=str))

        jobs.append((name, lambda: natten_anchor(args, device, save)))
    for name, job in jobs:
        start = time.perf_counter()
        try:
            results[name] = job()
        except Exception as exc:  # one anchor failing must not lose the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=4)}
        print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(markdown(results))
    for name, res in results.items():
        if isinstance(res, dict):
            for key, value in res.items():
                if "error" in key or "diff" in key:
                    print(f"{name}: {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
