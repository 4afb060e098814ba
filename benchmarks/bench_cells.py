"""Time whole cells at two git revisions: one quick-suite cell and one (shortened) CIFAR-10 cell, before and after.

Each revision is checked out with ``git archive`` into a temporary directory; each cell runs there in its own
process (``python -m attn_zoo.grid.cell SPEC RESULT DIR``, the worker the local executor starts), with that
revision's code only (``PYTHONPATH`` is the checkout). The cell's spec is resolved by the same revision from its
own copy of the suite file, with the overrides below, so a spec format that changed between the revisions is
read by the code that wrote it. Rounds are interleaved round-robin (every round runs every cell at both
revisions; the order of the revisions alternates per round), so a change of load hits both alike.

Reported per cell: the median wall time of the worker at each revision, the speed-up (the median of the
per-round ratios before / after, paired under the same load) and its interval (the smallest and largest
per-round ratio), and the training time the cell itself measured (``train_time_s``). Written to
``OUT/cells.json`` (every time, with the command, machine, date and revisions) and ``OUT/cells.md``.

The CIFAR-10 cell is shortened (``--cifar-set``, by default 2,000 training images, one epoch, no evaluation at
other resolutions): the data path is the one a full cell takes. Run on a quiet machine::

    OMP_NUM_THREADS=1 python benchmarks/bench_cells.py --before REV --after HEAD --rounds 5 \\
        --out benchmarks/results/cells
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CELLS = {
    "quick": {"suite": "suites/quick.toml", "set": {}},
    "cifar10": {
        "suite": "suites/cifar10_equal_macs.toml",
        "set": {"data.train_size": 2000, "train.epochs": 1, "train.eval_resolutions": []},
    },
}

RESOLVE = """
import json, sys
from attn_zoo.grid.suite import load_suite
suite = load_suite(sys.argv[1], overrides=json.loads(sys.argv[2]))
want = json.loads(sys.argv[3])
plain = lambda spec: spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)  # a typed spec, or an older dict
specs = [plain(c.spec) for c in suite.cells]
specs = [s for s in specs if all(s.get(k) == v for k, v in want.items())]
if not specs:
    sys.exit("no cell of " + sys.argv[1] + " matches " + sys.argv[3])
print(json.dumps(specs[0], default=str))
"""


def parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def checkout(rev: str, into: Path) -> str:
    """``git archive REV`` unpacked into ``into``; returns the full commit id."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    data = subprocess.run(["git", "archive", "--format=tar", sha], cwd=ROOT, capture_output=True, check=True).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return sha


def worker_env(tree: Path, threads: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    # the shared data sit beside the project (or beside its main checkout, for a git worktree), not beside a
    # temporary checkout
    if "ATTN_ZOO_SHARED_DATA" not in env:
        for shared in (ROOT.parent / "shared" / "data", main_checkout().parent / "shared" / "data"):
            if shared.is_dir():
                env["ATTN_ZOO_SHARED_DATA"] = str(shared)
                break
    return env


def main_checkout() -> Path:
    common = subprocess.run(
        ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return Path(common).parent if common else ROOT


def resolve_spec(tree: Path, cell: dict, mechanism: str, extra: dict, env: dict) -> dict:
    overrides = {**cell["set"], **extra}
    want = {"mechanism": mechanism, "seed": 0}
    proc = subprocess.run(
        [sys.executable, "-c", RESOLVE, cell["suite"], json.dumps(overrides), json.dumps(want)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{tree.name}: resolving {cell['suite']} failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout)


def run_cell(tree: Path, spec_path: Path, work: Path, env: dict) -> dict:
    result, artifacts = work / "result.json", work / "artifacts"
    result.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "attn_zoo.grid.cell", str(spec_path), str(result), str(artifacts)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    out = json.loads(result.read_text()) if result.is_file() else {"status": "failed", "reason": proc.stderr[-300:]}
    metrics = out.get("metrics", {})
    return {
        "wall_s": wall,
        "status": out.get("status"),
        "reason": out.get("reason"),
        "train_time_s": metrics.get("train_time_s"),
        "train_steps": metrics.get("train_steps"),
        "test_top1": metrics.get("test_top1"),
    }


def machine() -> str:
    from attn_zoo.measure.environment import cpu_model  # the CPU model name the store's rows record

    return f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def summarize(runs: dict, revisions: dict) -> dict:
    out = {}
    for cell, by_rev in runs.items():
        before, after = by_rev["before"], by_rev["after"]
        ok = all(r["status"] == "ok" for r in before + after)
        ratios = [b["wall_s"] / a["wall_s"] for b, a in zip(before, after)]
        train = [
            b["train_time_s"] / a["train_time_s"]
            for b, a in zip(before, after)
            if b["train_time_s"] and a["train_time_s"]
        ]
        out[cell] = {
            "all_ok": ok,
            "before_median_s": statistics.median(r["wall_s"] for r in before),
            "after_median_s": statistics.median(r["wall_s"] for r in after),
            "speedup": statistics.median(ratios),
            "speedup_interval": [min(ratios), max(ratios)],
            "train_speedup": statistics.median(train) if train else None,
            "train_speedup_interval": [min(train), max(train)] if train else None,
        }
    return out


def markdown(summary: dict, meta: dict) -> str:
    lines = [
        f"Cells at `{meta['revisions']['before'][:10]}` (before) and `{meta['revisions']['after'][:10]}` (after), "
        f"{meta['rounds']} interleaved rounds; {meta['machine']}; {meta['date']}.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "| cell | before s (median) | after s (median) | speed-up (median of rounds) | interval (min-max) "
        "| training speed-up | all ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell, s in summary.items():
        train = f"{s['train_speedup']:.2f}x" if s["train_speedup"] else "-"
        lo, hi = s["speedup_interval"]
        lines.append(
            f"| {cell} | {s['before_median_s']:.1f} | {s['after_median_s']:.1f} | {s['speedup']:.2f}x "
            f"| {lo:.2f}-{hi:.2f}x | {train} | {'yes' if s['all_ok'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision timed as 'before'")
    parser.add_argument("--after", required=True, help="git revision timed as 'after'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--mechanism", default="global", help="the cell's mechanism (seed 0)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the workers")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every cell (JSON value)"
    )
    parser.add_argument(
        "--cifar-set", action="append", default=[], metavar="KEY=VALUE", help="an override for the CIFAR-10 cell"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cells")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.set)
    extra = {k: parse_value(v) for k, v in extra.items()}
    cells = {name: dict(CELLS[name]) for name in args.cells}
    if "cifar10" in cells and args.cifar_set:
        cifar = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.cifar_set)}
        cells["cifar10"] = {**cells["cifar10"], "set": {**cells["cifar10"]["set"], **cifar}}
    meta = {
        "command": "python benchmarks/bench_cells.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "rounds": args.rounds,
        "load_avg": [],
    }
    with tempfile.TemporaryDirectory(prefix="attn_zoo_bench_cells_") as tmp:
        base = Path(tmp)
        trees, revisions, specs = {}, {}, {}
        for side in ("before", "after"):
            trees[side] = base / side
            revisions[side] = checkout(getattr(args, side), trees[side])
        meta["revisions"] = revisions
        for side, tree in trees.items():
            env = worker_env(tree, args.threads)
            for name, cell in cells.items():
                path = base / f"{side}-{name}.json"
                path.write_text(json.dumps(resolve_spec(tree, cell, args.mechanism, extra, env)))
                specs[side, name] = path
        runs: dict = {name: {"before": [], "after": []} for name in cells}
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for name in cells:
                for side in order:
                    work = base / f"work-{side}-{name}-{r}"
                    work.mkdir()
                    row = run_cell(trees[side], specs[side, name], work, worker_env(trees[side], args.threads))
                    row["round"] = r
                    runs[name][side].append(row)
                    print(json.dumps({"cell": name, "side": side, **row}), flush=True)
            meta["load_avg"].append(os.getloadavg()[0])
    summary = summarize(runs, revisions)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cells.json").write_text(json.dumps({**meta, "summary": summary, "runs": runs}, indent=1) + "\n")
    (args.out / "cells.md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
