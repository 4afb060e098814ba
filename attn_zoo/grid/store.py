"""The results store: one SQLite file per suite under ``results/``, written in transactions.

Tables:
    runs(run_id, suite, suite_path, suite_toml, command, environment, started_at, finished_at)
    cells(cell_id, suite, label, mechanism, seed, spec, status, reason, run_id, environment, backends,
          started_at, finished_at, attempts)
    metrics(cell_id, name, value)        -- one number per row: params, macs, latency_ms, val_top1, ...

A cell's status is one of ``pending``, ``running``, ``ok``, ``failed``, ``diverged``, ``oom``, ``timeout``.
Plots and tables are made from stored rows, never from variables still in memory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

STATUSES = ("pending", "running", "ok", "failed", "diverged", "oom", "timeout")
FINISHED = ("ok",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, suite TEXT, suite_path TEXT, suite_toml TEXT, command TEXT,
    environment TEXT, started_at REAL, finished_at REAL
);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, suite TEXT, label TEXT, mechanism TEXT, seed INTEGER, spec TEXT,
    status TEXT NOT NULL DEFAULT 'pending', reason TEXT, run_id TEXT, environment TEXT, backends TEXT,
    started_at REAL, finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0, worker TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id) ON DELETE CASCADE, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (cell_id, name)
);
CREATE INDEX IF NOT EXISTS cells_status ON cells(status);
"""


class Store:
    """A suite's SQLite store. Safe to open from several processes (WAL journal, busy timeout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=60000")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): all of it lands or none of it."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- runs -------------------------------------------------------------------------------------------
    def start_run(
        self, suite: str, suite_path: str, suite_toml: str, command: str, environment: Mapping[str, Any]
    ) -> str:
        run_id = uuid.uuid4().hex[:12]
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (run_id, suite, suite_path, suite_toml, command, json.dumps(environment), time.time()),
            )
        return run_id

    def finish_run(self, run_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET finished_at = ? WHERE run_id = ?", (time.time(), run_id))

    def runs(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY started_at")]

    # -- cells ------------------------------------------------------------------------------------------
    def register_cells(self, suite: str, cells: list[tuple[str, str, str, int, Mapping[str, Any]]]) -> None:
        """Add ``(cell_id, label, mechanism, seed, spec)`` rows that are not there yet (status pending)."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO cells (cell_id, suite, label, mechanism, seed, spec) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (cid, suite, label, mech, seed, json.dumps(spec, sort_keys=True))
                    for cid, label, mech, seed, spec in cells
                ],
            )

    def claim(self, cell_id: str, run_id: str, retry_failed: bool, stale_after_s: float | None = None) -> bool:
        """Mark a cell running for this run if no one else holds it; ``False`` when it is done or taken.

        A ``running`` cell whose worker is gone (a killed runner) is taken over after ``stale_after_s``
        seconds without a heartbeat; finished cells are never re-run.
        """
        allowed = ["pending"] + (["failed", "diverged", "oom", "timeout"] if retry_failed else [])
        with self.transaction() as db:
            row = db.execute("SELECT status, worker, started_at FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
            if row is None:
                return False
            status, worker, started = row
            stale = (
                status == "running"
                and not _worker_alive(worker)
                and (stale_after_s is None or time.time() - (started or 0) > stale_after_s)
            )
            if status not in allowed and not stale:
                return False
            db.execute(
                "UPDATE cells SET status='running', run_id=?, started_at=?, attempts=attempts+1, worker=?, "
                "reason=NULL WHERE cell_id=?",
                (run_id, time.time(), _worker_id(), cell_id),
            )
            return True

    def finish_cell(
        self,
        cell_id: str,
        status: str,
        metrics: Mapping[str, float] | None = None,
        reason: str | None = None,
        environment: Mapping[str, Any] | None = None,
        backends: Any = None,
        spec: Mapping[str, Any] | None = None,
    ) -> None:
        """Write a cell's outcome and metrics in one transaction."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not in {STATUSES}")
        with self.transaction() as db:
            db.execute(
                "UPDATE cells SET status=?, reason=?, finished_at=?, environment=COALESCE(?, environment), "
                "backends=COALESCE(?, backends), worker=NULL WHERE cell_id=?",
                (
                    status,
                    reason,
                    time.time(),
                    json.dumps(environment) if environment else None,
                    json.dumps(backends) if backends is not None else None,
                    cell_id,
                ),
            )
            if spec is not None:
                db.execute("UPDATE cells SET spec=? WHERE cell_id=?", (json.dumps(spec, sort_keys=True), cell_id))
            db.execute("DELETE FROM metrics WHERE cell_id = ?", (cell_id,))
            db.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?)",
                [(cell_id, k, float(v)) for k, v in (metrics or {}).items() if _is_number(v)],
            )

    def status(self, cell_id: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT status FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
        return row[0] if row else None

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            return dict(db.execute("SELECT status, COUNT(*) FROM cells GROUP BY status").fetchall())

    def cells(self, status: str | None = None) -> list[dict[str, Any]]:
        """Cells with their metrics as a ``metrics`` dict and the spec decoded."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            query = "SELECT * FROM cells" + (" WHERE status = ?" if status else "") + " ORDER BY rowid"
            rows = [dict(r) for r in db.execute(query, (status,) if status else ())]
            metrics: dict[str, dict[str, float]] = {}
            for cid, name, value in db.execute("SELECT cell_id, name, value FROM metrics"):
                metrics.setdefault(cid, {})[name] = value
        for row in rows:
            for key in ("spec", "environment", "backends"):
                row[key] = json.loads(row[key]) if row[key] else None
            row["metrics"] = metrics.get(row["cell_id"], {})
        return rows

    def frame(self, status: str | None = "ok"):
        """A pandas DataFrame, one row per cell: identity columns, the cell's knobs, then every metric."""
        import pandas as pd

        records = []
        for row in self.cells(status):
            spec = row["spec"] or {}
            record = {
                "cell_id": row["cell_id"],
                "suite": row["suite"],
                "label": row["label"],
                "mechanism": row["mechanism"],
                "seed": row["seed"],
                "status": row["status"],
                "reason": row["reason"],
                "img_size": (spec.get("model") or {}).get("img_size"),
                "dims": json.dumps((spec.get("model") or {}).get("dims")),
                "depths": json.dumps((spec.get("model") or {}).get("depths")),
                "data": (spec.get("data") or {}).get("source"),
                "backends": ",".join(row["backends"] or []) if isinstance(row["backends"], list) else None,
                "device": (row["environment"] or {}).get("device_name"),
            }
            for key, value in (spec.get("knobs") or {}).items():
                record[f"knob.{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else value
            record.update(row["metrics"])
            records.append(record)
        return pd.DataFrame.from_records(records)

    def integrity_check(self) -> str:
        with self._connect() as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value))


def _worker_id() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def _worker_alive(worker: str | None) -> bool:
    """Whether the runner process that claimed a cell still lives (only knowable on this host)."""
    if not worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != os.uname().nodename:
        return True  # another machine: trust it (stale_after_s decides)
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True
