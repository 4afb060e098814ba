"""Measure the shape table ``auto`` reads (attn_zoo/layers/auto_table.json), then check ``auto`` at whole models.

1. **Calls.** Every attention call of the paper presets (batch 1, forward) and of the 32x32 harness ``zoo_s32``
   with each mechanism (the quick suite's knobs; batch 1 forward, and batch 64 forward + backward as in training)
   is recorded by a spy on the dispatch (``attn_zoo.layers.backends.run``): the exact q/k/v/bias shapes and
   strides (views of a qkv projection, an expanded global query, a broadcast bias), so the paths are timed on
   tensors laid out as in the model.
2. **Paths per call.** For each distinct call, every path usable here (``reference`` / ``sdpa`` for dense
   attention, ``reference`` / ``cpu_fast`` for neighbourhood attention) is timed on fresh tensors of those shapes,
   interleaved in every round (the order rotates), forward under ``no_grad`` or forward + backward. The row keeps
   each path's median ms and its median per-round ratio to the first path (paired under the same load).
3. **Models.** Each model is timed with ``auto`` and with every forced path, interleaved per round: the
   median per-round ratio of ``auto`` to each forced path (forward at batch 1; for zoo_s32 also a training step at
   batch 64).

One thread (``torch.set_num_threads(1)``), CPU. Run (writes the table with its provenance, then the model check)::

    PYTHONPATH=. python benchmarks/bench_auto_table.py --rounds 9 --write attn_zoo/layers/auto_table.json \\
        --models-json benchmarks/results/auto-models-cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attn_zoo.backbone.config import MixerSpec  # noqa: E402
from attn_zoo.backbone.presets import create_model  # noqa: E402
from attn_zoo.backbone.presets.zoo import ZOO_S32_KNOBS  # noqa: E402
from attn_zoo.layers import backends  # noqa: E402
from attn_zoo.layers import neighborhood as nb  # noqa: E402
from attn_zoo.layers.attention import dense_call  # noqa: E402

PAPER_PRESETS = ("swin_t", "scalablevit_s", "gcvit_xxt", "dilateformer_t", "tic")
ZOO_KNOBS = ZOO_S32_KNOBS
TRAIN_BATCH = 64


def models() -> dict[str, Callable[[], torch.nn.Module]]:
    out: dict[str, Callable[[], torch.nn.Module]] = {p: (lambda p=p: create_model(p)) for p in PAPER_PRESETS}
    for mech, knobs in ZOO_KNOBS.items():
        out[f"zoo_s32/{mech}"] = lambda m=mech, k=knobs: create_model("zoo_s32", mixer=MixerSpec(m, k), num_classes=2)
    return out


# -- 1. the calls -----------------------------------------------------------------------------------------------------
def record_calls(model: torch.nn.Module, batch: int, train: bool) -> list[dict]:
    """The attention calls of one forward (and backward) of ``model``: op, shapes, bias, grad, window."""
    calls: list[dict] = []
    real = backends.run

    def spy(op, name, device, *args, **kwargs):  # type: ignore[no-untyped-def]
        q, k, v = args[:3]
        if op == "dense":
            bias = kwargs.get("bias")
            call = dense_call(q, k, v, bias)
            call["bias_shape"] = list(bias.shape) if bias is not None else None
            call["bias_stride"] = list(bias.stride()) if bias is not None else None
        else:
            kernel, dil, _scale, border = args[3:7]
            call = nb.na_call(q, border, kernel)
            call.update(dilation=list(dil), kernel=list(kernel))
        call["shapes"] = [list(t.shape) for t in (q, k, v)]
        call["strides"] = [list(t.stride()) for t in (q, k, v)]
        call["op"] = op
        calls.append(call)
        return real(op, name, device, *args, **kwargs)

    backends.run = spy
    try:
        size = model.config.img_size
        x = torch.randn(batch, model.config.in_chans, size, size)
        model.train(train)
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    finally:
        backends.run = real
    return calls


KEY = ("op", "n_q", "n_k", "head_dim", "v_dim", "seqs", "bias", "grad", "border")


def distinct(calls: list[dict]) -> list[dict]:
    """One call per shape-table key (the features ``auto`` looks up); the first one seen is measured."""
    seen, out = set(), []
    for c in calls:
        key = tuple(c.get(k) for k in KEY)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


# -- 2. paths per call ------------------------------------------------------------------------------------------------
def call_runner(call: dict, path: str) -> Callable[[], None]:
    """A closure running ``path`` on fresh tensors of the call's shapes (forward, or forward + backward)."""
    g = torch.Generator().manual_seed(0)
    grad = bool(call["grad"])
    leaves: list[torch.Tensor] = []

    def laid_out(shape: list[int], stride: list[int]) -> torch.Tensor:
        """A tensor of ``shape`` with the model's ``stride`` (a view of a fresh leaf when grad is needed)."""
        size = 1 + sum((n - 1) * st for n, st in zip(shape, stride))
        base = torch.randn(size, generator=g).requires_grad_(grad)
        leaves.append(base)
        return base.as_strided(shape, stride)

    q, k, v = (laid_out(s, st) for s, st in zip(call["shapes"], call["strides"]))
    fn = backends.TABLE["cpu"][call["op"]][path].run
    if call["op"] == "dense":
        bias = laid_out(call["bias_shape"], call["bias_stride"]) if call["bias_shape"] else None

        def forward():  # type: ignore[no-untyped-def]
            return fn(q, k, v, scale=0.2, bias=bias)
    else:
        kernel, dil = tuple(call["kernel"]), tuple(call["dilation"])

        def forward():  # type: ignore[no-untyped-def]
            return fn(q, k, v, kernel, dil, 0.2, call["border"])

    weights = None

    def step() -> None:
        nonlocal weights
        if not grad:
            with torch.no_grad():
                forward()
            return
        out = forward()
        if weights is None:
            weights = torch.linspace(-1, 1, out.numel()).view_as(out)
        (out * weights).sum().backward()
        for t in leaves:
            t.grad = None

    return step


MIN_MS = 5.0  # one timed sample lasts at least this long: tiny calls are repeated inside it


def interleaved(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, dict]:
    """Median ms per call and median per-round ratio to the first name; rounds rotate the order. A sample repeats
    a call ``inner`` times (the same for every name) so that it lasts at least ``MIN_MS``."""
    names = list(steps)
    slowest = 0.0
    for s in steps.values():  # warm-up, and the length of one call
        s()
        t0 = time.perf_counter()
        s()
        slowest = max(slowest, (time.perf_counter() - t0) * 1e3)
    inner = max(1, int(MIN_MS / max(slowest, 1e-3)) + 1) if slowest < MIN_MS else 1
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            for _ in range(inner):
                steps[n]()
            times[n].append((time.perf_counter() - t0) * 1e3 / inner)
    first = names[0]
    return {
        n: {
            "ms": round(statistics.median(times[n]), 4),
            "rel": round(statistics.median(a / b for a, b in zip(times[n], times[first])), 4),
        }
        for n in names
    }


def measure_rows(calls: list[dict], rounds: int) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {"dense": [], "neighborhood": []}
    for call in calls:
        op = call["op"]
        paths = [p for p in backends.TABLE["cpu"][op] if backends.unavailable_reason(p, "cpu", op) is None]
        paths.sort(key=lambda p: p != "reference")  # reference first: the ratios are to it
        res = interleaved({p: call_runner(call, p) for p in paths}, rounds)
        row = {k: v for k, v in call.items() if k not in ("op", "kernel") or (op == "neighborhood" and k == "kernel")}
        row.update(ms={p: r["ms"] for p, r in res.items()}, rel={p: r["rel"] for p, r in res.items()})
        row["fastest"] = min(row["rel"], key=row["rel"].get)
        row["load_1m"] = round(os.getloadavg()[0], 2)
        rows[op].append(row)
        print(f"{op:12s} {call['shapes'][0]} grad={call['grad']} -> {row['fastest']} {row['rel']}", flush=True)
    return rows


# -- 3. whole models --------------------------------------------------------------------------------------------------
def model_check(rounds: int, only: list[str] | None = None) -> list[dict]:
    out = []
    for label, build in models().items():
        if only and label not in only:
            continue
        torch.manual_seed(0)
        model = build()
        offered = sorted({p for m in model.mixers() for p in m.backends})
        forced = [p for p in offered if all(p in m.backends for m in model.mixers())]
        forced = [p for p in forced if backends.unavailable_reason(p, "cpu") is None]
        modes = [("forward", 1)] + ([("train", TRAIN_BATCH)] if label.startswith("zoo_s32") else [])
        for mode, batch in modes:
            size = model.config.img_size
            x = torch.randn(batch, model.config.in_chans, size, size)

            def step_for(path: str, model=model, mode: str = mode, x: torch.Tensor = x) -> Callable[[], None]:
                def step() -> None:
                    for m in model.mixers():
                        m.set_backend(path)
                    if mode == "forward":
                        model.eval()
                        with torch.no_grad():
                            model(x)
                    else:
                        model.train()
                        model.zero_grad(set_to_none=True)
                        model(x).sum().backward()

                return step

            res = interleaved({"auto": step_for("auto"), **{p: step_for(p) for p in forced}}, rounds)
            step_for("auto")()
            taken = model.attention_backends()
            best = min(forced, key=lambda p: res[p]["rel"])
            ratio = res["auto"]["rel"] / res[best]["rel"]  # auto over the fastest forced path, per-round medians
            row = {"model": label, "mode": mode, "batch": batch, "auto_takes": taken, "fastest_forced": best}
            row.update(auto_over_fastest=round(ratio, 4), paths=res, load_1m=round(os.getloadavg()[0], 2))
            out.append(row)
            print(f"{label:22s} {mode:8s} auto={taken} fastest forced={best} auto/fastest={ratio:.3f}", flush=True)
    return out


def dump_table(table: dict) -> str:
    """The table as JSON with one line per measured row (easy to read and to diff)."""
    rows = {}
    for device, ops in table.items():
        if device == "provenance":
            continue
        for op, section in ops.items():
            if isinstance(section, dict) and section.get("rows"):
                rows[(device, op)] = section["rows"]
                section["rows"] = f"@rows:{device}:{op}@"
    text = json.dumps(table, indent=1)
    for (device, op), op_rows in rows.items():
        body = ",\n".join("    " + json.dumps(r) for r in op_rows)
        text = text.replace(f'"@rows:{device}:{op}@"', "[\n" + body + "\n   ]")
        table[device][op]["rows"] = op_rows
    return text + "\n"


def provenance(command: str) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    from attn_zoo.measure.environment import cpu_model

    return {
        "command": command,
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} (shared: load 1m at start "
        f"{os.getloadavg()[0]:.1f}; read the paired ratios)",
        "date": datetime.date.today().isoformat(),
        "commit": commit.stdout.strip() or "unknown",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--write", type=Path, help="write the table (CPU rows and provenance) here")
    parser.add_argument("--models-json", type=Path, help="also time whole models with auto and forced paths")
    parser.add_argument("--skip-calls", action="store_true", help="only the model check (table already written)")
    parser.add_argument("--only", nargs="+", metavar="MODEL", help="model check of these models only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = "PYTHONPATH=. python benchmarks/bench_auto_table.py " + " ".join(sys.argv[1:])
    if not args.skip_calls:
        calls = []
        for label, build in models().items():
            torch.manual_seed(0)
            calls += record_calls(build(), 1, train=False)
            if label.startswith("zoo_s32"):
                calls += record_calls(build(), TRAIN_BATCH, train=True)
        calls = distinct(calls)
        print(f"{len(calls)} distinct calls", flush=True)
        rows = measure_rows(calls, args.rounds)
        if args.write:
            table = json.loads(args.write.read_text()) if args.write.is_file() else {}
            table["provenance"] = provenance(command)
            for op, op_rows in rows.items():
                table.setdefault("cpu", {}).setdefault(op, {})["rows"] = op_rows
            args.write.write_text(dump_table(table))
    if args.models_json:
        from attn_zoo.layers import auto_table

        auto_table.load.cache_clear()
        backends.forget()  # choices made while recording the calls used the table as it was then
        result = {"provenance": provenance(command), "models": model_check(args.rounds, args.only)}
        args.models_json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
