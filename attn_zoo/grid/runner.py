"""Run a suite's cells through an executor, writing every outcome to the store as it lands.

Resumable: cells already ``ok`` are skipped; failed ones re-run only with ``retry_failed``. A finished cell
whose code changed since (its stored code fingerprint differs from the current one, see
:mod:`attn_zoo.grid.provenance`) is re-run, and the run says why in one line per reason (``2 cells re-run:
code of msa_conv changed``); ``keep_stale`` keeps such rows instead. Each cell is
claimed in the store before it runs, so two runners on one suite share the work and never run a cell twice
at once; a runner that dies leaves its cells to be taken over (see :meth:`Store.claim`). A crash,
out-of-memory or diverging loss fails one cell, not the grid. A store that cannot be written (disk full,
read-only) stops the grid with one clear error; what was written before stays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from attn_zoo.grid.executors import Executor, InlineExecutor, LocalExecutor, run_cell_in_worker
from attn_zoo.grid.provenance import HARNESS, UNRECORDED, cell_code, changed_parts, code_id
from attn_zoo.grid.store import FAILED, STALE_AFTER_S, Store
from attn_zoo.grid.suite import Cell, Suite
from attn_zoo.measure.environment import environment

__all__ = ["RunSummary", "default_store_path", "run_cell_in_worker", "run_suite"]


@dataclasses.dataclass
class RunSummary:
    store: Path
    total: int
    ran: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    elsewhere: int = 0  # held by another live runner when this one finished
    rerun: dict[str, int] = dataclasses.field(default_factory=dict)  # "code of msa_conv changed" -> cells
    kept_stale: dict[str, int] = dataclasses.field(default_factory=dict)  # the same, kept by keep_stale
    problems: list[str] = dataclasses.field(default_factory=list)  # malformed rows left out of aggregates
    migrated_from: int | None = None  # the store's schema before this run migrated it
    outcomes: dict[str, str] = dataclasses.field(default_factory=dict)
    by_status: dict[str, int] = dataclasses.field(default_factory=dict)

    def progress_note(self) -> str:
        """``ok 3 failed 1 (oom 1)``: what the progress bar shows."""
        failed = {k: v for k, v in self.by_status.items() if k != "ok" and v}
        detail = f" ({', '.join(f'{k} {v}' for k, v in sorted(failed.items()))})" if failed else ""
        return f"ok {self.ok} failed {self.failed}{detail}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "store": str(self.store)}


class _Bar(tqdm):
    monitor_interval = 0  # no monitor thread: workers are forked from this process


def default_store_path(suite: Suite, out_dir: str | Path = "results") -> Path:
    return Path(out_dir) / f"{suite.name}.sqlite"


def artifact_root(store_path: Path, suite: Suite) -> Path:
    """Where cells of ``suite`` write files: ``<out>/<suite>/artifacts/<cell_id>/``, absolute (cells return
    the paths they wrote, and a path relative to the working directory must not be read as relative to
    the store's directory)."""
    return store_path.parent.resolve() / suite.name / "artifacts"


def run_suite(
    suite: Suite,
    store_path: str | Path | None = None,
    *,
    executor: Executor | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    command: str = "",
    timeout_s: float | None = None,
    memory_limit_mb: int | None = None,
    runner: Callable[[Cell], dict[str, Any]] | None = None,
    heartbeat_s: float = 15.0,
    stale_after_s: float = STALE_AFTER_S,
    keep_stale: bool = False,
) -> RunSummary:
    """Run every cell of ``suite`` not yet finished in the store; returns what happened.

    ``executor`` runs the cells (default: :class:`LocalExecutor`, one worker process per cell, with
    ``timeout_s`` and ``memory_limit_mb``); ``runner(cell) -> result`` is a shortcut for an
    :class:`InlineExecutor` running that function in this process. ``keep_stale`` keeps finished rows that
    other code computed instead of re-running them.
    """
    store_path = Path(store_path or default_store_path(suite))
    store = Store(store_path)
    store.register_cells(suite.name, suite.cells)
    codes = _codes(suite)
    run_id = store.start_run(suite.name, suite.path, suite.text, command, environment())
    if executor is None:
        executor = (
            InlineExecutor(lambda cell, _dir: runner(cell))
            if runner is not None
            else LocalExecutor(
                1, timeout_s=timeout_s, memory_limit_mb=memory_limit_mb, work_root=work_root_for(store_path)
            )
        )
    if getattr(executor, "machine_lock", False) is None:  # timing owns the machine: see attn_zoo.measure.machine
        executor.machine_lock = store.path.parent.resolve()
    summary = RunSummary(store.path, total=len(suite.cells), migrated_from=store.migrated_from)
    artifacts = artifact_root(store_path, suite)

    statuses = store.statuses()
    stale = _stale(store, suite, codes)
    for why in stale.values():
        counts = summary.kept_stale if keep_stale else summary.rerun
        counts[why] = counts.get(why, 0) + 1
    for why, n in (summary.kept_stale if keep_stale else summary.rerun).items():
        cells = f"{n} cell{'s' if n > 1 else ''}"
        verb = "kept although computed by other code (--keep-stale)" if keep_stale else "re-run"
        print(f"{cells} {verb}: {why}", file=sys.stderr)
    settled = {
        c.cell_id
        for c in suite.cells
        if _settled(statuses.get(c.cell_id), retry_failed) and (keep_stale or c.cell_id not in stale)
    }
    bar = _Bar(
        total=len(suite.cells),
        initial=len(settled),
        disable=not progress,
        unit="cell",
        desc=suite.name,
        dynamic_ncols=True,
    )
    queue = deque(suite.cells)
    held_elsewhere: list[Cell] = []
    in_flight: dict[Any, tuple[Cell, float]] = {}
    last_beat = time.monotonic()

    def tick(note: str = "") -> None:
        bar.set_postfix_str(summary.progress_note() + (f" | {note}" if note else ""), refresh=False)
        bar.update(1)

    try:
        while queue or in_flight:
            while queue and len(in_flight) < executor.slots:
                cell = queue.popleft()
                if store.claim(
                    cell.cell_id, run_id, retry_failed, stale_after_s, code_id(codes[cell.cell_id]), keep_stale
                ):
                    bar.set_postfix_str(f"{summary.progress_note()} | {_name(cell)}")
                    in_flight[executor.submit(cell, artifacts / cell.cell_id)] = (cell, time.perf_counter())
                    continue
                status = store.status(cell.cell_id)
                if status == "running":
                    held_elsewhere.append(cell)
                    continue
                summary.skipped += 1
                summary.outcomes[cell.cell_id] = status or "skipped"
                if cell.cell_id not in settled:
                    tick()
            for token, note in getattr(executor, "take_notes", list)():
                if token in in_flight:
                    bar.write(f"  {_name(in_flight[token][0])}: {_estimate_note(note)}")
            for token, result in executor.wait(heartbeat_s if in_flight else 0.0):
                cell, start = in_flight.pop(token)
                result = {
                    **result,
                    "metrics": {**(result.get("metrics") or {}), "cell_wall_s": time.perf_counter() - start},
                }
                _record(store, run_id, cell, result, artifacts, summary, bar, codes[cell.cell_id])
                tick()
            if in_flight and time.monotonic() - last_beat > heartbeat_s:
                store.heartbeat(run_id)
                last_beat = time.monotonic()
            if not queue and not in_flight and held_elsewhere:
                # another runner held these; take over the ones whose runner has died since
                retry = [c for c in held_elsewhere if store.status(c.cell_id) == "running"]
                held_elsewhere = []
                for cell in retry:
                    fp = code_id(codes[cell.cell_id])
                    if store.claim(cell.cell_id, run_id, retry_failed, stale_after_s, fp, keep_stale):
                        in_flight[executor.submit(cell, artifacts / cell.cell_id)] = (cell, time.perf_counter())
                    else:
                        held_elsewhere.append(cell)
                if not in_flight:
                    break
        summary.elsewhere = len(held_elsewhere)
        for cell in held_elsewhere:
            summary.outcomes[cell.cell_id] = "running elsewhere"
    except BaseException:
        executor.shutdown()
        bar.close()
        _release_quietly(store, run_id)
        raise
    bar.close()
    executor.shutdown()
    store.write_aggregates()
    summary.problems = list(store.problems)
    store.finish_run(run_id)
    return summary


def work_root_for(store_path: str | Path) -> Path:
    """Where the local executor keeps its cells' working directories: ``<results>/.cells``."""
    return Path(store_path).parent.resolve() / ".cells"


def _estimate_note(note: dict[str, Any]) -> str:
    """``about 2.5 min for 300 steps (0.5 s a step over the first 5)``."""
    try:
        seconds, total = float(note["estimated_s"]), int(note["total_steps"])
        per_step, done = float(note["seconds_per_step"]), int(note["steps_done"])
    except (KeyError, TypeError, ValueError):
        return "progress report unreadable"
    return f"about {_duration(seconds)} for {total} steps ({per_step:.3g} s a step over the first {done})"


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _codes(suite: Suite) -> dict[str, dict[str, Any]]:
    """Each cell's code mapping (computed once per set of mechanisms)."""
    by_mechanisms: dict[str, dict[str, Any]] = {}
    out = {}
    for cell in suite.cells:
        key = str(cell.spec.mechanism)
        if key not in by_mechanisms:
            by_mechanisms[key] = cell_code(cell.spec)
        out[cell.cell_id] = by_mechanisms[key]
    return out


def _stale(store: Store, suite: Suite, codes: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{cell_id: why}`` of this suite's finished cells that other code computed."""
    stored = store.codes()
    out = {}
    for cell in suite.cells:
        status, fp, code = stored.get(cell.cell_id, (None, None, None))
        if status in ("ok", *FAILED) and fp != code_id(codes[cell.cell_id]):
            out[cell.cell_id] = _why(changed_parts(code, codes[cell.cell_id]))
    return out


def _why(parts: list[str]) -> str:
    if parts == [UNRECORDED]:
        return f"code {UNRECORDED}"
    names = [p for p in parts if p != HARNESS] + [p for p in parts if p == HARNESS]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"code of {text} changed"


def _settled(status: str | None, retry_failed: bool) -> bool:
    return status == "ok" or (status in FAILED and not retry_failed)


def _name(cell: Cell) -> str:
    return f"{cell.label}" + (f" ({cell.variant})" if cell.variant else "") + f" seed {cell.seed}"


def _record(
    store: Store,
    run_id: str,
    cell: Cell,
    result: dict[str, Any],
    artifacts: Path,
    summary: RunSummary,
    bar,
    code: dict[str, Any] | None = None,
) -> None:
    status = result.get("status", "failed")
    if status not in ("ok", *FAILED):
        status, result = "failed", {**result, "reason": f"unknown status {status!r}: {result.get('reason')}"}
    reason = result.get("reason")
    kept, dropped = _check_artifacts(result.get("artifacts") or {}, store.path.parent)
    if dropped:
        reason = (reason + "; " if reason else "") + f"ignored artifacts outside the results directory: {dropped}"
    metrics = dict(result.get("metrics") or {})
    spec = dict(cell.spec.to_dict(), model=result["model"]) if result.get("model") else None
    written = store.finish_cell(
        cell.cell_id,
        status,
        metrics,
        reason,
        result.get("environment"),
        result.get("backends"),
        spec,
        run_id=run_id,
        artifacts=kept,
        code=code,
    )
    summary.ran += 1
    summary.outcomes[cell.cell_id] = status if written else "taken over"
    if written:
        summary.by_status[status] = summary.by_status.get(status, 0) + 1
    if not written:
        bar.write(f"  {_name(cell)}: another runner took this cell over; its result is kept")
    elif status == "ok":
        summary.ok += 1
    else:
        summary.failed += 1
        bar.write(f"  {_name(cell)}: {status}: {reason}")


def _check_artifacts(artifacts: dict[str, Any], root: Path) -> tuple[dict[str, str], list[str]]:
    """Artifact paths relative to the store's directory; any path outside it is dropped."""
    kept, dropped = {}, []
    base = root.resolve()
    for name, path in artifacts.items():
        full = (root / str(path)).resolve()
        if full.is_relative_to(base) and full.exists():
            kept[str(name)] = str(full.relative_to(base))
        else:
            dropped.append(str(path))
    return kept, dropped


def _release_quietly(store: Store, run_id: str) -> None:
    """Hand this run's claimed cells back (interrupted); if even that cannot be written, the next runner
    takes them over as stale."""
    with contextlib.suppress(Exception):  # the original error matters more
        store.release(run_id)
