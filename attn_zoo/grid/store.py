"""The results store: one SQLite file per suite under ``results/``, every write one transaction.

Tables (schema 2):
    runs(run_id, suite, suite_path, suite_toml, command, environment, started_at, finished_at, worker)
    cells(cell_id, config_id, suite, label, mechanism, variant, seed, spec, factors, status, reason, run_id,
          environment, backends, started_at, finished_at, heartbeat_at, attempts, worker,
          code, code_fp, digest)
    metrics(cell_id, name, value)            -- one number per row: params, macs, latency_median_ms, val_top1
    samples(cell_id, name, data)             -- a list of numbers as JSON: every timed call of a latency mode
    artifacts(cell_id, name, path)           -- files a cell wrote (e.g. an ERF map), relative to the store
    aggregates(config_id, label, variant, metric, n, mean, std, ci95, updated_at)
                                              -- per configuration without the seed: mean, std, 95% CI

A store says what it is: SQLite's ``application_id`` is :data:`APPLICATION_ID` and ``user_version`` the schema
version (:data:`SCHEMA_VERSION`). Opening for writing refuses, in one line, a file that is not an attn_zoo store
or has a newer schema, and migrates a store of schema 1 (the first release's, which set neither pragma)
explicitly, in one transaction. Read-only opening (``mode=ro``) never writes or creates anything.

``code`` is the JSON code mapping of :mod:`attn_zoo.grid.provenance` that computed the row and ``code_fp`` its
short hash; ``digest`` is the sha256 of a finished row's content (its columns, metrics, samples and artifacts;
not the bookkeeping of who held it when), written with the row: :meth:`Store.verify` lists the rows that no
longer match. Reading never raises for a malformed row (a spec that is not a JSON table, a metric that is not
a finite number of sane size): the row is left out and named, by cell and field, in :attr:`Store.problems`.

A cell's status is one of ``pending``, ``running``, ``ok``, ``failed``, ``diverged``, ``oom``, ``timeout``.
``attempts`` counts how often a runner claimed the cell. A runner claims a cell before running it (one
``BEGIN IMMEDIATE`` transaction, so two runners never hold the same cell); a ``running`` cell whose runner
is gone (dead process on this host, or no heartbeat for ``stale_after_s`` from another host) is taken over.
A finish is written only while the runner still holds the claim, so a cell is never recorded twice.

Every SQLite failure (disk full, read-only directory, a lock held too long) becomes one :class:`StoreError`
naming the file and what to do; the transaction is rolled back, so the store stays as it was.
Plots and tables are made from stored rows, never from variables still in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from attn_zoo.errors import AttnZooError

STATUSES = ("pending", "running", "ok", "failed", "diverged", "oom", "timeout")
FAILED = ("failed", "diverged", "oom", "timeout")
STALE_AFTER_S = 300.0  # no heartbeat for this long from another host: the runner is presumed dead

APPLICATION_ID = 0x417A6F6F  # "Azoo"
SCHEMA_VERSION = 2
METRIC_LIMIT = 1e18  # a stored metric is a finite number below this in magnitude; anything else is malformed
_FINISHED = ("ok", *FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, suite TEXT, suite_path TEXT, suite_toml TEXT, command TEXT,
    environment TEXT, started_at REAL, finished_at REAL, worker TEXT
);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, suite TEXT, label TEXT, mechanism TEXT, seed INTEGER, spec TEXT,
    status TEXT NOT NULL DEFAULT 'pending', reason TEXT, run_id TEXT, environment TEXT, backends TEXT,
    started_at REAL, finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0, worker TEXT,
    config_id TEXT, variant TEXT, factors TEXT, heartbeat_at REAL, code TEXT, code_fp TEXT, digest TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id) ON DELETE CASCADE, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (cell_id, name)
);
CREATE TABLE IF NOT EXISTS samples (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id) ON DELETE CASCADE, name TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (cell_id, name)
);
CREATE TABLE IF NOT EXISTS artifacts (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id) ON DELETE CASCADE, name TEXT NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (cell_id, name)
);
CREATE TABLE IF NOT EXISTS aggregates (
    config_id TEXT NOT NULL, label TEXT, variant TEXT, metric TEXT NOT NULL, n INTEGER, mean REAL, std REAL,
    ci95 REAL, updated_at REAL, PRIMARY KEY (config_id, metric)
);
CREATE INDEX IF NOT EXISTS cells_status ON cells(status);
"""
# columns a schema-1 store may lack (added during the first release, or by schema 2); the migration adds them
_ADDED_COLUMNS = {
    "cells": (
        ("config_id", "TEXT"),
        ("variant", "TEXT"),
        ("factors", "TEXT"),
        ("heartbeat_at", "REAL"),
        ("code", "TEXT"),
        ("code_fp", "TEXT"),
        ("digest", "TEXT"),
    ),
    "runs": (("worker", "TEXT"),),
}
# the content a row's digest covers, in this order (bookkeeping such as worker and heartbeat is left out)
DIGEST_COLUMNS = (
    "cell_id",
    "config_id",
    "suite",
    "label",
    "mechanism",
    "variant",
    "seed",
    "spec",
    "factors",
    "status",
    "reason",
    "environment",
    "backends",
    "code",
    "code_fp",
)


class StoreError(AttnZooError, RuntimeError):
    """The results store cannot be read or written; the message names the file and what to do."""


def _explain(path: Path, exc: BaseException) -> str:
    text = str(exc)
    low = text.lower()
    if "full" in low or getattr(exc, "errno", None) == 28:
        hint = "the disk is full: free space or choose another --out directory"
    elif "readonly" in low or "read-only" in low or "permission" in low or "unable to open" in low:
        hint = "it is not writable (read-only file or directory?): fix the permissions or choose another --out"
    elif "locked" in low or "busy" in low:
        hint = "another process held its write lock for too long: try again"
    elif "malformed" in low or "not a database" in low:
        hint = "the file is not a healthy SQLite store"
    else:
        hint = "see the SQLite message"
    return f"results store {str(path)!r}: {text} ({hint}; cells finished before are kept)"


class Store:
    """A suite's SQLite store. Safe to open from several processes (WAL journal, busy timeout).

    ``readonly=True`` opens without writing anything (for ``attn-zoo results/report`` on a store someone
    else owns, or one on read-only media).
    """

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self.problems: list[str] = []  # malformed rows the last read left out, one line each
        self.migrated_from: int | None = None
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"results store {str(self.path)!r} does not exist")
            with self._connect() as db:
                self.version = self._check_identity(db, kind_of(db))
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(_explain(self.path.parent, exc)) from None
        self._open_for_writing()

    def _open_for_writing(self) -> None:
        """Create the store, or check that the file is one of ours and migrate an older schema: one write
        transaction, so two runners opening a new or old store do it once, and a refused file is untouched."""
        try:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(_explain(self.path, exc)) from None
        try:
            db.execute("PRAGMA busy_timeout=60000")
            db.execute("BEGIN IMMEDIATE")
            try:
                kind = kind_of(db)
                if kind == "empty":
                    for statement in _statements(_SCHEMA):
                        db.execute(statement)
                    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    self.version = SCHEMA_VERSION
                else:
                    self.version = self._check_identity(db, kind)
                    if self.version < SCHEMA_VERSION:
                        _migrate(db, self.version)
                        self.migrated_from, self.version = self.version, SCHEMA_VERSION
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(_explain(self.path, exc)) from None
        finally:
            db.close()

    def _check_identity(self, db: sqlite3.Connection, kind: str) -> int:
        """The schema version of an attn_zoo store; a StoreError for anything else."""
        where = f"results store {str(self.path)!r}"
        if kind == "empty":
            raise StoreError(f"{where} is an empty SQLite file, not an attn_zoo store (it was left as it is)")
        if kind == "foreign":
            raise StoreError(
                f"{where} is not an attn_zoo store (a SQLite file of another program; it was left as it is): "
                "name another --out or store file"
            )
        version = int(kind)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{where} has schema {version}, newer than this attn_zoo knows ({SCHEMA_VERSION}): upgrade attn_zoo"
            )
        return version

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            if self.readonly:
                db = _open_readonly(self.path)
            else:
                db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                db.execute("PRAGMA busy_timeout=60000")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreError(_explain(self.path, exc)) from None
        try:
            yield db
        except sqlite3.Error as exc:
            raise StoreError(_explain(self.path, exc)) from None
        finally:
            db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): all of it lands or none of it."""
        if self.readonly:
            raise StoreError(f"results store {str(self.path)!r} was opened read-only")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already (disk full)
                    db.execute("ROLLBACK")
                raise

    # -- runs -------------------------------------------------------------------------------------------
    def start_run(
        self, suite: str, suite_path: str, suite_toml: str, command: str, environment: Mapping[str, Any]
    ) -> str:
        run_id = uuid.uuid4().hex[:12]
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs (run_id, suite, suite_path, suite_toml, command, environment, started_at, worker) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, suite, suite_path, suite_toml, command, json.dumps(environment), time.time(), worker_id()),
            )
        return run_id

    def finish_run(self, run_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET finished_at = ? WHERE run_id = ?", (time.time(), run_id))
        self.checkpoint()

    def checkpoint(self) -> None:
        """Fold the WAL journal into the main file, so the ``.sqlite`` file alone holds everything."""
        with self._connect() as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def runs(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY started_at")]
        for row in rows:
            environment, _ = _decode(row.get("environment"))
            row["environment"] = environment if isinstance(environment, dict) else {}
        return rows

    # -- cells ------------------------------------------------------------------------------------------
    def register_cells(self, suite: str, cells: Sequence[Any]) -> None:
        """Add cells (:class:`~attn_zoo.grid.suite.Cell`) that are not there yet, status ``pending``."""
        rows = [
            (
                c.cell_id,
                c.config_id,
                suite,
                c.label,
                c.mechanism,
                c.variant,
                c.seed,
                json.dumps(c.spec.to_dict(), sort_keys=True),
                json.dumps(c.factors),
            )
            for c in cells
        ]
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO cells (cell_id, config_id, suite, label, mechanism, variant, seed, spec, "
                "factors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            # cells stored by an older version lack these; fill them in without touching results
            db.executemany(
                "UPDATE cells SET config_id=?, variant=?, factors=? WHERE cell_id=? AND config_id IS NULL",
                [(r[1], r[5], r[8], r[0]) for r in rows],
            )

    def claim(
        self,
        cell_id: str,
        run_id: str,
        retry_failed: bool = False,
        stale_after_s: float = STALE_AFTER_S,
        code_fp: str | None = None,
        keep_stale: bool = False,
    ) -> bool:
        """Mark a cell ``running`` for this run if no one else holds it; ``False`` when it is done or taken.

        Finished (``ok``) cells are not claimed, and failed ones only with ``retry_failed``, unless ``code_fp``
        is given and the row was computed by other code (another ``code_fp``, or none recorded): such a row is
        re-run, unless ``keep_stale``. A ``running`` cell
        is taken over when its runner is gone: the process is dead (same host; checked by pid and start
        time, so a reused pid does not count), or no heartbeat came for ``stale_after_s`` (another host).
        """
        allowed = ["pending", *(FAILED if retry_failed else ())]
        with self.transaction() as db:
            row = db.execute(
                "SELECT status, worker, started_at, heartbeat_at, code_fp FROM cells WHERE cell_id = ?", (cell_id,)
            ).fetchone()
            if row is None:
                return False
            status, worker, started, heartbeat, stored_fp = row
            stale = status == "running" and _is_stale(worker, heartbeat or started, stale_after_s)
            other_code = code_fp is not None and not keep_stale and status in _FINISHED and stored_fp != code_fp
            if status not in allowed and not stale and not other_code:
                return False
            now = time.time()
            db.execute(
                "UPDATE cells SET status='running', run_id=?, started_at=?, heartbeat_at=?, attempts=attempts+1, "
                "worker=?, reason=NULL WHERE cell_id=?",
                (run_id, now, now, worker_id(), cell_id),
            )
            return True

    def heartbeat(self, run_id: str) -> None:
        """Say that this run still works on the cells it holds."""
        with self.transaction() as db:
            db.execute("UPDATE cells SET heartbeat_at=? WHERE run_id=? AND status='running'", (time.time(), run_id))

    def release(self, run_id: str, reason: str = "interrupted") -> int:
        """Put the cells this run holds back to ``pending`` (an interrupted run); returns how many."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE cells SET status='pending', reason=?, worker=NULL WHERE run_id=? AND status='running'",
                (reason, run_id),
            )
            return cur.rowcount

    def finish_cell(
        self,
        cell_id: str,
        status: str,
        metrics: Mapping[str, float] | None = None,
        reason: str | None = None,
        environment: Mapping[str, Any] | None = None,
        backends: Any = None,
        spec: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        artifacts: Mapping[str, str] | None = None,
        code: Mapping[str, Any] | None = None,
    ) -> bool:
        """Write a cell's outcome, metrics, samples, artifacts, code and digest in one transaction.

        A metric whose value is a list of numbers (every timed call of a latency mode) goes to ``samples``.
        ``code`` is the :mod:`~attn_zoo.grid.provenance` mapping of the code that computed the row.
        With ``run_id``, only while that run still holds the cell (``False`` otherwise: another runner took it
        over, and its result wins).
        """
        from attn_zoo.grid.provenance import code_id

        if status not in STATUSES:
            raise ValueError(f"status {status!r} not in {STATUSES}")
        with self.transaction() as db:
            guard = " AND run_id=? AND status='running'" if run_id else ""
            cur = db.execute(
                "UPDATE cells SET status=?, reason=?, finished_at=?, environment=COALESCE(?, environment), "
                "backends=COALESCE(?, backends), worker=NULL, code=?, code_fp=? WHERE cell_id=?" + guard,
                (
                    status,
                    reason,
                    time.time(),
                    json.dumps(environment, default=str) if environment else None,
                    json.dumps(backends) if backends is not None else None,
                    json.dumps(code, sort_keys=True) if code else None,
                    code_id(code),
                    cell_id,
                    *((run_id,) if run_id else ()),
                ),
            )
            if cur.rowcount == 0:
                return False
            if spec is not None:
                db.execute("UPDATE cells SET spec=? WHERE cell_id=?", (json.dumps(spec, sort_keys=True), cell_id))
            db.execute("DELETE FROM metrics WHERE cell_id = ?", (cell_id,))
            db.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?)",
                [(cell_id, k, float(v)) for k, v in (metrics or {}).items() if _is_number(v)],
            )
            db.execute("DELETE FROM samples WHERE cell_id = ?", (cell_id,))
            db.executemany(
                "INSERT INTO samples VALUES (?, ?, ?)",
                [(cell_id, k, json.dumps([float(x) for x in v])) for k, v in (metrics or {}).items() if _is_series(v)],
            )
            db.execute("DELETE FROM artifacts WHERE cell_id = ?", (cell_id,))
            db.executemany(
                "INSERT INTO artifacts VALUES (?, ?, ?)", [(cell_id, k, str(v)) for k, v in (artifacts or {}).items()]
            )
            db.execute("UPDATE cells SET digest=? WHERE cell_id=?", (row_digest(db, cell_id), cell_id))
        return True

    def codes(self) -> dict[str, tuple[str, str | None, dict[str, Any] | None]]:
        """``{cell_id: (status, code_fp, code mapping or None)}`` of every cell (a malformed code reads None)."""
        with self._connect() as db:
            rows = db.execute("SELECT cell_id, status, code_fp, code FROM cells").fetchall()
        out = {}
        for cell_id, status, fp, code in rows:
            decoded, _ = _decode(code)
            out[cell_id] = (status, fp, decoded if isinstance(decoded, dict) else None)
        return out

    def verify(self) -> tuple[int, list[str]]:
        """Check every finished row against its digest: ``(rows checked, [one line per row that fails])``."""
        if self.version < SCHEMA_VERSION:
            raise StoreError(
                f"results store {str(self.path)!r} has schema {self.version}, whose rows carry no digests "
                "(`attn-zoo run` on its suite migrates it and writes them)"
            )
        bad = []
        with self._connect() as db:
            rows = db.execute(
                "SELECT cell_id, label, seed, status, digest FROM cells WHERE status IN (?, ?, ?, ?, ?) ORDER BY rowid",
                _FINISHED,
            ).fetchall()
            for cell_id, label, seed, status, digest in rows:
                actual = row_digest(db, cell_id)
                if digest is None:
                    bad.append(f"cell {cell_id} ({label} seed {seed}, {status}): no digest")
                elif digest != actual:
                    bad.append(f"cell {cell_id} ({label} seed {seed}, {status}): content does not match its digest")
        return len(rows), bad

    def status(self, cell_id: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT status FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
        return row[0] if row else None

    def statuses(self) -> dict[str, str]:
        """``{cell_id: status}`` of every cell."""
        with self._connect() as db:
            return dict(db.execute("SELECT cell_id, status FROM cells").fetchall())

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            return dict(db.execute("SELECT status, COUNT(*) FROM cells GROUP BY status").fetchall())

    def cells(self, status: str | None = None) -> list[dict[str, Any]]:
        """Cells with their metrics as a ``metrics`` dict, samples as ``samples`` (name -> list), artifacts as
        ``artifacts``, JSON columns decoded. A malformed row is left out and named in :attr:`problems`."""
        self.problems = []
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            query = "SELECT * FROM cells" + (" WHERE status = ?" if status else "") + " ORDER BY rowid"
            rows = [dict(r) for r in db.execute(query, (status,) if status else ())]
            metrics: dict[str, dict[str, Any]] = {}
            for cid, name, value in db.execute("SELECT cell_id, name, value FROM metrics"):
                metrics.setdefault(cid, {})[name] = value
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            artifacts: dict[str, dict[str, str]] = {}
            if "artifacts" in tables:  # a schema-1 store of the first weeks may lack it
                for cid, name, value in db.execute("SELECT cell_id, name, path FROM artifacts"):
                    artifacts.setdefault(cid, {})[name] = value
            samples: dict[str, dict[str, Any]] = {}
            if "samples" in tables:
                for cid, name, data in db.execute("SELECT cell_id, name, data FROM samples"):
                    samples.setdefault(cid, {})[name] = data
        out = []
        for row in rows:
            cid = row["cell_id"]
            row["metrics"], row["samples"] = metrics.get(cid, {}), samples.get(cid, {})
            row["artifacts"] = artifacts.get(cid, {})
            problem = _check_row(row)
            if problem:
                who = f"cell {cid} ({row.get('label')} seed {row.get('seed')})"
                self.problems.append(f"{who}: {problem}; left out of tables and aggregates")
                continue
            out.append(row)
        return out

    def frame(self, status: str | None = "ok", samples: bool = False):
        """A pandas DataFrame, one row per cell (``status=None``: every cell). Columns:

        identity: ``cell_id``, ``config_id`` (the configuration without the seed), ``suite``, ``label``
        (mechanism or preset), ``mechanism``, ``variant`` (factor values other than mechanism and seed, e.g.
        ``"window=4"``), ``seed``, ``status``, ``reason``, ``attempts``; configuration: ``img_size``,
        ``dims``, ``depths`` (JSON), ``data`` (source), ``backends``, ``device``, ``knob.<name>`` for each knob
        set by the suite, ``factor.<key>`` for each grid factor; then every metric by name (``params``,
        ``macs``, ``flops``, ``attention_macs``, ``latency_median_ms``, ``latency_iqr_ms``,
        ``throughput_img_s``, ``val_top1``, ``budget_target``, ``diverged_step``, ``cell_wall_s``, ...); with
        ``samples``, every sample list by name (``latency_fwd_times_ms``: a list per row); ``code_fp`` and
        ``commit`` (the code that computed the row) and ``artifact.<name>`` paths (relative to the store's
        directory). Malformed rows are left out (see :attr:`problems`).
        """
        import pandas as pd

        from attn_zoo.train.spec import spec_columns

        records = []
        for row in self.cells(status):
            spec = row["spec"] or {}
            environment = row["environment"] or {}
            record = {
                "cell_id": row["cell_id"],
                "config_id": row.get("config_id"),
                "suite": row["suite"],
                "label": row["label"],
                "mechanism": row["mechanism"],
                "variant": row.get("variant") or "",
                "seed": row["seed"],
                "status": row["status"],
                "reason": row["reason"],
                "attempts": row["attempts"],
                **spec_columns(spec),
                "backends": ",".join(row["backends"] or []) if isinstance(row["backends"], list) else None,
                "device": environment.get("device_name"),
                "code_fp": row.get("code_fp"),
                "code": row.get("code"),
                "commit": environment.get("commit"),
            }
            for key, value in _table(spec.get("knobs")).items():
                record[f"knob.{key}"] = _scalar(value)
            for key, value in (row["factors"] or {}).items():
                if key not in ("mechanism", "seed"):
                    record[f"factor.{key}"] = _scalar(value.get("name", value) if isinstance(value, dict) else value)
            record.update(row["metrics"])
            if samples:  # lists (every timed call): object columns, not metrics
                record.update(row["samples"])
            for name, path in row["artifacts"].items():
                record[f"artifact.{name}"] = path
            records.append(record)
        return pd.DataFrame.from_records(records)

    # -- aggregates -------------------------------------------------------------------------------------
    def write_aggregates(self) -> int:
        """Recompute the ``aggregates`` table (mean, std, 95% CI over seeds per configuration) from the
        ``ok`` cells, in one transaction; returns the number of rows."""
        from attn_zoo.report.tables import aggregate_long

        frame = self.frame(samples=True)
        rows = aggregate_long(frame) if len(frame) else []
        now = time.time()
        with self.transaction() as db:
            db.execute("DELETE FROM aggregates")
            db.executemany(
                "INSERT INTO aggregates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r["config_id"], r["label"], r["variant"], r["metric"], r["n"], *_nums(r), now) for r in rows],
            )
        return len(rows)

    def aggregates(self):
        """Aggregated rows as a long DataFrame: config_id, label, variant, metric, n, mean, std, ci95."""
        import pandas as pd

        with self._connect() as db:
            return pd.read_sql_query(
                "SELECT config_id, label, variant, metric, n, mean, std, ci95 FROM aggregates "
                "ORDER BY label, variant, metric",
                db,
            )

    # -- export -----------------------------------------------------------------------------------------
    def integrity_check(self) -> str:
        with self._connect() as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0]


def export_frame(frame, path: str | Path) -> Path:
    """Write a DataFrame as CSV or Parquet, by the file's suffix."""
    path = Path(path)
    try:
        if path.suffix == ".csv":
            frame.to_csv(path, index=False)
        elif path.suffix in (".parquet", ".pq"):
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise AttnZooError("Parquet export needs pyarrow: pip install 'attn-zoo[parquet]'") from None
            # mixed-type columns (a knob that is 4 in one cell and "auto" in another) become text
            out = frame.copy()
            for col in out.columns:
                if out[col].dtype == object:
                    out[col] = out[col].map(lambda v: None if v is None else str(v))
            out.to_parquet(path, index=False)
        else:
            raise AttnZooError(f"export file {str(path)!r}: unknown format; allowed suffixes: .csv, .parquet")
    except OSError as exc:
        raise AttnZooError(f"cannot write {str(path)!r}: {exc}") from None
    return path


def kind_of(db: sqlite3.Connection) -> str:
    """What an open SQLite file is: ``"empty"`` (no schema at all), ``"foreign"``, or an attn_zoo schema version
    as text (``"1"``: the first release's, recognised by its tables and columns since it set no pragma)."""
    app = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    objects = db.execute("SELECT type, name FROM sqlite_master").fetchall()
    if app == APPLICATION_ID:
        return str(max(int(version), 1))
    if app != 0 or version != 0:
        return "foreign"
    if not objects:
        return "empty"
    tables = {name for kind, name in objects if kind == "table"}
    if {"runs", "cells", "metrics"} <= tables:
        columns = {row[1] for row in db.execute("PRAGMA table_info(cells)")}
        known = {"cell_id", "suite", "label", "mechanism", "seed", "spec", "status", "reason", "run_id"}
        allowed = known | {c for c in DIGEST_COLUMNS} | {"started_at", "finished_at", "attempts", "worker"}
        allowed |= {name for name, _ in _ADDED_COLUMNS["cells"]}
        if known <= columns and columns <= allowed:
            return "1"
    return "foreign"


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Schema ``version`` -> :data:`SCHEMA_VERSION`, inside the caller's write transaction.

    1 -> 2: the columns the first release added on the fly (config_id, variant, factors, heartbeat_at, runs'
    worker) where missing; code, code_fp and digest on cells; the samples table; a digest for every finished
    row (of its content as migrated); then application_id and user_version."""
    if version == 1:
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        for statement in _statements(_SCHEMA):
            db.execute(statement)
        finished = [r[0] for r in db.execute("SELECT cell_id FROM cells WHERE status IN (?, ?, ?, ?, ?)", _FINISHED)]
        db.executemany("UPDATE cells SET digest=? WHERE cell_id=?", [(row_digest(db, c), c) for c in finished])
    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def row_digest(db: sqlite3.Connection, cell_id: str) -> str:
    """sha256 of a row's content as stored: :data:`DIGEST_COLUMNS`, then its metrics, samples and artifacts
    sorted by name (values exactly as SQLite returns them, so a number edited by hand changes the digest)."""
    row = db.execute(f"SELECT {', '.join(DIGEST_COLUMNS)} FROM cells WHERE cell_id=?", (cell_id,)).fetchone()
    parts: list[Any] = [list(row) if row else None]
    for query in (
        "SELECT name, value FROM metrics WHERE cell_id=?",
        "SELECT name, data FROM samples WHERE cell_id=?",
        "SELECT name, path FROM artifacts WHERE cell_id=?",
    ):
        parts.append(sorted((list(r) for r in db.execute(query, (cell_id,))), key=lambda r: str(r[0])))
    payload = json.dumps(parts, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()


def _decode(text: Any) -> tuple[Any, str | None]:
    """A JSON column: ``(value, None)``, or ``(None, what is wrong)``; NULL/empty reads as None."""
    if text is None or text == "":
        return None, None
    if not isinstance(text, str):
        return None, f"{text!r} is not JSON text"
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, f"not JSON ({exc})"


_JSON_COLUMNS = {"spec": (dict,), "factors": (dict,), "environment": (dict,), "backends": (list, dict), "code": (dict,)}


def _check_row(row: dict[str, Any]) -> str | None:
    """Decode a row's JSON columns in place and check its metrics and samples; the first problem, or None."""
    for key, kinds in _JSON_COLUMNS.items():
        value, error = _decode(row.get(key))
        if error is None and value is not None and not isinstance(value, kinds):
            error = (
                f"a JSON {type(value).__name__}, not a {' or '.join('table' if k is dict else 'list' for k in kinds)}"
            )
        if error is None and key == "spec" and value is None:
            error = "missing"
        if error:
            return f"field {key}: {error}"
        row[key] = value
    for name, value in row["metrics"].items():
        if not _is_number(value) or abs(float(value)) >= METRIC_LIMIT:
            return f"metric {name} = {value!r}: not a finite number below {METRIC_LIMIT:g} in magnitude"
    for name, data in list(row["samples"].items()):
        value, error = _decode(data)
        if error is None and not _is_series(value):
            error = "not a list of finite numbers"
        if error:
            return f"samples {name}: {error}"
        row["samples"][name] = [float(v) for v in value]
    return None


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_series(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_number(v) for v in value)


def _scalar(value: Any) -> Any:
    """A knob or factor value as one cell of a table: per-stage values as ``8/4/2/1``, lists as JSON."""
    if isinstance(value, dict) and set(value) == {"per_stage"} and isinstance(value["per_stage"], list):
        return "/".join(str(v) for v in value["per_stage"])
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _nums(row: Mapping[str, Any]) -> tuple[float | None, ...]:
    return tuple(None if v is None or math.isnan(v) else float(v) for v in (row["mean"], row["std"], row["ci95"]))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _open_readonly(path: Path) -> sqlite3.Connection:
    """Read without writing: ``mode=ro``. A WAL store at rest (no ``-wal`` file beside it: no runner holds it
    open, every change is in the main file) is opened ``immutable=1``, so that reading creates no ``-wal`` and
    ``-shm`` files beside it; so is any store on read-only media (no -shm file can be made)."""
    uri = path.resolve().as_uri()
    if _wal_header(path) and not Path(f"{path}-wal").exists():
        return sqlite3.connect(f"{uri}?immutable=1", uri=True)
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        db.close()
        return sqlite3.connect(f"{uri}?immutable=1", uri=True)


def _wal_header(path: Path) -> bool:
    """Whether the file's SQLite header says WAL mode (bytes 18 and 19 are 2)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return False
    return len(head) == 20 and head.startswith(b"SQLite format 3\x00") and head[18] == head[19] == 2


# -- who holds a cell --------------------------------------------------------------------------------------
_HOST = socket.gethostname()
_local = threading.local()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def worker_id() -> str:
    """``host:pid:start`` of this process: the start time tells a live runner from a reused pid."""
    pid = os.getpid()
    if getattr(_local, "pid", None) != pid:
        _local.pid, _local.id = pid, f"{_HOST}:{pid}:{_start_time(pid) or ''}"
    return _local.id


def worker_alive(worker: str | None) -> bool | None:
    """Whether the runner that claimed a cell still lives: True/False on this host, None elsewhere."""
    if not worker:
        return False
    parts = worker.rsplit(":", 2)
    if len(parts) == 2:  # stores from before the start time was recorded: host:pid
        parts.append("")
    host, pid, start = parts
    if host != _HOST:
        return None
    try:
        pid_int = int(pid)
        os.kill(pid_int, 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        pass  # alive, owned by another user
    # a different start time: the pid now belongs to another process
    return not (start and _start_time(pid_int) not in (None, start))


def _is_stale(worker: str | None, last_seen: float | None, stale_after_s: float) -> bool:
    alive = worker_alive(worker)
    if alive is None:
        return time.time() - (last_seen or 0) > stale_after_s
    return not alive
