"""Run a suite's cells, each in its own worker process, writing every outcome to the store as it lands.

Resumable: cells already ``ok`` in the store are skipped; failed ones re-run only on request. A crash,
out-of-memory or diverging loss fails one cell, not the grid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from attn_zoo.grid.store import Store
from attn_zoo.grid.suite import Cell, Suite
from attn_zoo.measure.environment import environment


@dataclasses.dataclass
class RunSummary:
    store: Path
    total: int
    ran: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    outcomes: dict[str, str] = dataclasses.field(default_factory=dict)


def default_store_path(suite: Suite, out_dir: str | Path = "results") -> Path:
    return Path(out_dir) / f"{suite.name}.sqlite"


def run_cell_in_worker(
    cell: Cell, timeout_s: float | None = None, memory_limit_mb: int | None = None
) -> dict[str, Any]:
    """Run one cell in a fresh Python process; never raises for what happens inside the cell."""
    with tempfile.TemporaryDirectory(prefix="attn_zoo_cell_") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(dict(cell.spec)))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        preexec = _memory_cap(memory_limit_mb) if memory_limit_mb else None
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "attn_zoo.grid.cell", str(spec_path), str(result_path)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=env,
                preexec_fn=preexec,
            )
        except subprocess.TimeoutExpired:
            return {
                "status": "timeout",
                "reason": f"cell ran past its time limit of {timeout_s:.0f} s",
                "metrics": {},
            }
        if result_path.exists():
            return json.loads(result_path.read_text())
        stderr = (proc.stderr or "").strip().splitlines()[-5:]
        signal_note = f" (killed by signal {-proc.returncode})" if proc.returncode < 0 else ""
        oom = proc.returncode == -9 or any("MemoryError" in line or "out of memory" in line for line in stderr)
        return {
            "status": "oom" if oom else "failed",
            "reason": f"worker exited with code {proc.returncode}{signal_note}: " + " | ".join(stderr),
            "metrics": {},
        }


def _memory_cap(limit_mb: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def run_suite(
    suite: Suite,
    store_path: str | Path | None = None,
    *,
    retry_failed: bool = False,
    progress: bool = True,
    command: str = "",
    timeout_s: float | None = None,
    memory_limit_mb: int | None = None,
    runner: Callable[[Cell], dict[str, Any]] | None = None,
) -> RunSummary:
    """Run every cell of ``suite`` not yet finished in the store; returns what happened."""
    store = Store(store_path or default_store_path(suite))
    store.register_cells(suite.name, [(c.cell_id, c.label, c.mechanism, c.seed, dict(c.spec)) for c in suite.cells])
    run_id = store.start_run(suite.name, suite.path, suite.text, command, environment())
    summary = RunSummary(store.path, total=len(suite.cells))
    execute = runner or (lambda cell: run_cell_in_worker(cell, timeout_s, memory_limit_mb))
    bar = tqdm(total=len(suite.cells), disable=not progress, unit="cell", desc=suite.name, dynamic_ncols=True)
    try:
        for cell in suite.cells:
            if not store.claim(cell.cell_id, run_id, retry_failed):
                summary.skipped += 1
                summary.outcomes[cell.cell_id] = store.status(cell.cell_id) or "skipped"
                bar.update(1)
                continue
            bar.set_postfix_str(f"{cell.label} seed {cell.seed} | ok {summary.ok} failed {summary.failed}")
            start = time.perf_counter()
            result = execute(cell)
            metrics = dict(result.get("metrics", {}), cell_wall_s=time.perf_counter() - start)
            spec = dict(cell.spec, model=result["model"]) if result.get("model") else None
            store.finish_cell(
                cell.cell_id,
                result["status"],
                metrics,
                result.get("reason"),
                result.get("environment"),
                result.get("backends"),
                spec,
            )
            summary.ran += 1
            summary.outcomes[cell.cell_id] = result["status"]
            if result["status"] == "ok":
                summary.ok += 1
            else:
                summary.failed += 1
                bar.write(f"  {cell.label} (seed {cell.seed}): {result['status']}: {result.get('reason')}")
            bar.set_postfix_str(f"ok {summary.ok} failed {summary.failed}")
            bar.update(1)
    finally:
        bar.close()
        store.finish_run(run_id)
    return summary
