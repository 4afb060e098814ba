"""Shared pieces of the grid and fault tests: a small suite file and a fake cell runner.

The fake runner returns metrics computed from the cell's configuration (no model is built), so the runner,
store, report and regression tests need no compute; the real cell code is tested by test_end_to_end.py,
test_faults_diverge_oom.py and test_grid_examples.py. Subprocess scripts import this module by path.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any

from attn_zoo.train.spec import CellSpec

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

SUITE = """
[suite]
name = "{name}"
description = "fake cells for the runner tests"

[model]
preset = "zoo_s32"

[budget]
metric = "none"

[measure]
latency = false
count = false

[grid]
mechanism = {mechanisms}
seed = {seeds}
{extra}
"""

BASE_ACCURACY = {"global": 80.0, "swin": 78.0, "ssa": 79.0, "iwsa": 77.0, "msda": 81.0, "gcvit": 79.5}


def write_suite(
    directory: Path,
    name: str = "fake",
    seeds: int = 2,
    mechanisms: tuple[str, ...] = ("global", "swin"),
    extra: str = "",
) -> Path:
    path = Path(directory) / f"{name}.toml"
    path.write_text(
        SUITE.format(
            name=name,
            mechanisms="[" + ", ".join(f'"{m}"' for m in mechanisms) + "]",
            seeds=list(range(seeds)),
            extra=extra,
        )
    )
    return path


def noise(*parts: Any) -> float:
    """A deterministic number in [-1, 1) from the parts (stands in for seed-to-seed variation)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**31 - 1.0


def fake_metrics(spec: CellSpec) -> dict[str, float]:
    """Plausible numbers: cost grows with resolution (quadratically in tokens for global attention)."""
    model = spec.model
    label, seed = spec.label, spec.seed
    img = model.img_size
    tokens = (img / model.patch_size) ** 2
    width = sum(model.dims)
    window = spec.knobs.get("window", 4)
    quadratic = label == "global"
    macs = width * 1e4 * tokens * (1 + (tokens / 256 if quadratic else window / 8))
    latency = macs / 5e6 * (1 + 0.02 * noise(spec.label, img, seed, "lat"))
    return {
        "params": float(width * width * 10),
        "macs": macs,
        "latency_median_ms": latency,
        "latency_iqr_ms": 0.01 * latency,
        "peak_mem_fwd_mb": tokens * (tokens / 64 if quadratic else 1.0) / 10,
        "val_top1": BASE_ACCURACY.get(label, 75.0) - 0.2 * window + 1.5 * noise(label, seed, window, "acc"),
        "tokens": tokens,
    }


def fake_runner(cell) -> dict[str, Any]:
    return {"status": "ok", "reason": None, "metrics": fake_metrics(cell.spec)}


def logging_runner(log: Path, sleep_s: float = 0.0):
    """A fake runner that appends ``cell_id pid start end`` to ``log`` for every execution."""

    def run(cell) -> dict[str, Any]:
        start = time.time()
        time.sleep(sleep_s)
        line = f"{cell.cell_id} {os.getpid()} {start:.6f} {time.time():.6f}\n"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())  # one write with O_APPEND: lines of two processes never interleave
        finally:
            os.close(fd)
        return fake_runner(cell)

    return run


def executions(log: Path) -> list[tuple[str, int, float, float]]:
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        cid, pid, start, end = line.split()
        rows.append((cid, int(pid), float(start), float(end)))
    return rows


# a worker command for LocalExecutor that starts in milliseconds: records its pid, sleeps, writes a result
FAKE_WORKER = r"""
import json, os, sys, time
spec_path, result_path = sys.argv[1], sys.argv[2]
spec = json.load(open(spec_path))
pid_log = os.environ["FAKE_WORKER_PIDS"]
with open(pid_log, "a") as f:
    f.write(f"{os.getpid()}\n")
time.sleep(float(os.environ.get("FAKE_WORKER_SLEEP", "0.3")))
tmp = result_path + ".tmp"
with open(tmp, "w") as f:
    json.dump({"status": "ok", "metrics": {"val_top1": 50.0 + spec["seed"]}}, f)
os.replace(tmp, result_path)
"""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return state != "Z"
    except OSError:
        return True


def wait_for(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel)


def erf_runner(cell, artifact_dir: Path) -> dict[str, Any]:
    """The fake runner plus an ERF map artifact: a Gaussian whose width grows with the window."""
    import numpy as np

    result = fake_runner(cell)
    size = cell.spec.model.img_size
    sigma = 3.0 * cell.spec.knobs.get("window", 6) / 2
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    erf = np.exp(-(xx**2 + yy**2) / (2 * sigma**2)).astype(np.float32)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    np.save(artifact_dir / "erf_untrained.npy", erf)
    result["artifacts"] = {"erf_untrained": str(artifact_dir / "erf_untrained.npy")}
    result["metrics"].update(erf_r50=1.18 * sigma, erf_r90=2.15 * sigma)
    return result
