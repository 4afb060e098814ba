"""Measure ``torch.compile`` of the training step per mechanism, and write the table ``[train] compile = "auto"``
reads (attn_zoo/train/compile_table.json).

For each mechanism, the quick suite's shapes (``zoo_s32`` with the quick suite's knobs, 32 x 32 inputs, 2 classes,
batch 64, one thread by default):

1. **Compile.** The training step (forward + loss, :func:`attn_zoo.train.speed.training_step`) is compiled and run
   once with its backward; the time of that first call is the compile time. A failure is recorded with its
   one-line reason, and the mechanism stays eager.
2. **Parity.** Two copies of the model from the same initial weights train side by side for ``--parity-steps``
   steps with the recipe's AdamW and schedule on the same batches (a fixed set of random images with labels
   from a fixed rule, cycled): one eager, one compiled. The loss curves must agree within ``--tolerance``
   (the largest absolute difference of a step's loss, relative to max(1, |loss|)).
3. **Time.** ``--rounds`` interleaved rounds (the order alternates per round), each one training step
   (forward, loss, backward, zero grad) eager and one compiled; the ratio is the median of the per-round ratios
   compiled / eager (paired under the same load).
4. **Channels-last** (``--channels-last``, by default the conv-heavy ``msa_conv``): an eager step with the model
   and input in ``torch.channels_last`` timed against the plain one in the same rounds.

``auto`` compiles a mechanism only where it compiled, matched, and was at least ``--min-gain`` faster. With
``--write`` the table is written with its provenance (command, machine, date, torch version, commit); ``--log``
keeps every measurement (JSON). Run::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_train_compile.py --rounds 5 --parity-steps 200 \\
        --write attn_zoo/train/compile_table.json --log benchmarks/results/train-compile-cpu.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attn_zoo.backbone.config import MixerSpec  # noqa: E402
from attn_zoo.backbone.presets import create_model  # noqa: E402
from attn_zoo.backbone.presets.zoo import ZOO_S32_KNOBS  # noqa: E402
from attn_zoo.train.recipe import TrainConfig, create_optimizer_and_schedule  # noqa: E402
from attn_zoo.train.speed import compile_available, training_step  # noqa: E402

MECHANISMS = tuple(ZOO_S32_KNOBS)


def build(mechanism: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("zoo_s32", mixer=MixerSpec(mechanism, ZOO_S32_KNOBS[mechanism]), num_classes=2)


def batches(count: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed random images; the label says whether the left half is brighter (learnable, so the loss moves)."""
    gen = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(count):
        x = torch.randn(batch, 3, 32, 32, generator=gen)
        y = (x[..., :16].mean(dim=(1, 2, 3)) > x[..., 16:].mean(dim=(1, 2, 3))).long()
        out.append((x, y))
    return out


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def timed_step(step, model, x, y) -> float:
    start = time.perf_counter()
    loss = step(x, y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def train_curve(step, model, data, steps: int) -> list[float]:
    config = TrainConfig(steps=steps, batch_size=data[0][0].shape[0])
    optimizer, scheduler = create_optimizer_and_schedule(model, config, steps)
    model.train()
    losses = []
    for i in range(steps):
        x, y = data[i % len(data)]
        loss = step(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(i + 1)
        losses.append(loss.item())
    return losses


def measure(mechanism: str, args) -> dict:
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    eager_model = build(mechanism)
    compiled_model = copy.deepcopy(eager_model)
    data = batches(args.parity_batches, args.batch)
    row: dict = {"mechanism": mechanism, "batch": args.batch, "threads": torch.get_num_threads()}
    eager = training_step(eager_model, criterion, False)
    compiled = training_step(compiled_model, criterion, True)
    x, y = data[0]
    start = time.perf_counter()
    try:
        timed_step(compiled, compiled_model, x, y)
    except Exception as exc:  # any failure of compile: recorded, the mechanism stays eager
        row.update(compile_ok=False, reason=f"compile failed: {one_line(exc)}")
    else:
        row.update(compile_ok=True, compile_s=time.perf_counter() - start)
    if args.parity_steps and row["compile_ok"]:
        start = time.perf_counter()
        ref = train_curve(eager, eager_model, data, args.parity_steps)
        got = train_curve(compiled, compiled_model, data, args.parity_steps)
        diffs = [abs(a - b) / max(1.0, abs(a)) for a, b in zip(ref, got)]
        window = 10  # the curve as a reader sees it: means over 10 steps
        means = [
            abs(sum(ref[i : i + window]) - sum(got[i : i + window]))
            / window
            / max(1.0, abs(sum(ref[i : i + window])) / window)
            for i in range(0, len(ref), window)
        ]
        beyond = [i for i, d in enumerate(diffs) if d > args.tolerance]
        row.update(
            parity_steps=args.parity_steps,
            parity_max_rel_diff=max(diffs),
            parity_max_rel_diff_10step_means=max(means),
            parity_first_step_beyond_tolerance=beyond[0] if beyond else None,
            parity_first_loss=ref[0],
            parity_last_loss_eager=ref[-1],
            parity_last_loss_compiled=got[-1],
            parity_ok=max(means) <= args.tolerance,
            parity_s=time.perf_counter() - start,
        )
    variants = {"eager": (eager, eager_model, x)}
    if row["compile_ok"]:
        variants["compiled"] = (compiled, compiled_model, x)
    if mechanism in args.channels_last:
        cl_model = copy.deepcopy(eager_model).to(memory_format=torch.channels_last)
        variants["channels_last"] = (
            training_step(cl_model, criterion, False),
            cl_model,
            x.contiguous(memory_format=torch.channels_last),
        )
    if len(variants) == 1:  # nothing to compare with
        return row
    for step, model, inp in variants.values():  # warm-up
        timed_step(step, model, inp, y)
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            step, model, inp = variants[name]
            times[name].append(timed_step(step, model, inp, y))
    for name, values in times.items():
        row[f"{name}_ms"] = 1000 * statistics.median(values)
    for name in names[1:]:
        row[f"{name}_ratio"] = statistics.median(a / b for a, b in zip(times[name], times["eager"]))
    row["load_avg_1m"] = os.getloadavg()[0]
    return row


def decide(row: dict, min_gain: float) -> tuple[bool, str]:
    """Compile or not, and the one-line reason (the time ratio, then the parity)."""
    if not row.get("compile_ok"):
        return False, row["reason"]
    ratio = row["compiled_ratio"]
    pays = ratio <= 1 - min_gain
    said = f"compiled step {ratio:.2f}x the eager time" + ("" if pays else ": does not pay")
    if "parity_ok" in row:
        same = "equal" if row["parity_ok"] else "NOT equal"
        said += (
            f"; loss curves over {row['parity_steps']} steps {same} within tolerance (10-step means differ by at most "
            f"{row['parity_max_rel_diff_10step_means']:.2g}, single steps by {row['parity_max_rel_diff']:.2g})"
        )
    return pays and row.get("parity_ok", False), said


def machine() -> str:
    from attn_zoo.measure.environment import cpu_model  # the CPU model name the store's rows record

    return f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summary(log: Path) -> str:
    """The log as a Markdown table (the one in benchmarks/README.md)."""
    data = json.loads(log.read_text())
    lines = [
        "| mechanism | compile s | eager ms | compiled ms | compiled / eager "
        "| loss curves differ by (10-step means, single steps) "
        "| channels-last / eager | auto |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if not r.get("compile_ok"):
            eager = f"{r['eager_ms']:.0f}" if "eager_ms" in r else ""
            cl = f"{r['channels_last_ratio']:.2f}x" if "channels_last_ratio" in r else "-"
            lines.append(f"| {r['mechanism']} | {r.get('reason')} | {eager} | - | - | - | {cl} | eager |")
            continue
        parity = (
            f"{r['parity_max_rel_diff_10step_means']:.2g}, {r['parity_max_rel_diff']:.2g} "
            f"(first step beyond 1e-3: {r['parity_first_step_beyond_tolerance']})"
            if "parity_steps" in r
            else "-"
        )
        cl = f"{r['channels_last_ratio']:.2f}x" if "channels_last_ratio" in r else "-"
        lines.append(
            f"| {r['mechanism']} | {r['compile_s']:.0f} | {r['eager_ms']:.0f} | {r['compiled_ms']:.0f} "
            f"| {r['compiled_ratio']:.2f}x | {parity} | {cl} | {'compiled' if r['compile'] else 'eager'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", type=Path, help="print the Markdown table of a log and stop")
    parser.add_argument("--mechanisms", nargs="+", default=list(MECHANISMS), choices=MECHANISMS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parity-steps", type=int, default=200)
    parser.add_argument("--parity-batches", type=int, default=8, help="distinct batches cycled in the parity run")
    parser.add_argument("--tolerance", type=float, default=1e-2, help="relative, on the loss curve's 10-step means")
    parser.add_argument("--min-gain", type=float, default=0.05, help="compile only when at least this much faster")
    parser.add_argument("--channels-last", nargs="*", default=["msa_conv"])
    parser.add_argument("--write", type=Path, help="write the compile table here")
    parser.add_argument("--log", type=Path, help="write every measurement here (JSON)")
    parser.add_argument("--note", default="", help="conditions of the run, kept in the provenance")
    args = parser.parse_args(argv)
    if args.summary:
        print(summary(args.summary))
        return 0
    torch.set_num_threads(args.threads)
    ok, reason = compile_available()
    provenance = {
        "command": "python benchmarks/bench_train_compile.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit(),
        "threads": args.threads,
        "note": args.note,
    }
    rows = []
    for mechanism in args.mechanisms:
        row = measure(mechanism, args) if ok else {"mechanism": mechanism, "compile_ok": False, "reason": reason}
        row["compile"], row["decision"] = decide(row, args.min_gain)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.log:  # after every mechanism: a run cut short keeps what it measured
            args.log.parent.mkdir(parents=True, exist_ok=True)
            args.log.write_text(json.dumps({"provenance": provenance, "rows": rows}, indent=1) + "\n")
    if args.write:
        keep = ("compile", "decision", "compile_s", "eager_ms", "compiled_ms", "compiled_ratio", "parity_steps")
        keep += ("parity_max_rel_diff", "parity_max_rel_diff_10step_means", "channels_last_ratio")
        table = {
            "provenance": provenance,
            "devices": {"cpu": {r["mechanism"]: {k: r[k] for k in keep if k in r} for r in rows}},
        }
        args.write.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
