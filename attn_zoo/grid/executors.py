"""Where cells run. The runner claims cells in the store and hands them to an executor; the executor only runs
them and reports results, so any executor (local processes now, Ray later) gets resumability, claiming and
the store's guarantees for free.

An executor has ``slots`` (cells it runs at once), ``submit(cell, artifact_dir) -> token``,
``wait(timeout_s) -> [(token, result), ...]`` (results finished so far, waiting at most ``timeout_s``) and
``shutdown()`` (stop whatever still runs). A result is a dict with at least ``status``, ``metrics`` and
``reason`` (see :mod:`attn_zoo.grid.cell`). ``wait`` must return every submitted token exactly once, with a
result even when the cell's process died. New executors register with :func:`register_executor`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from attn_zoo.errors import ConfigError
from attn_zoo.grid.cell import failure_result
from attn_zoo.grid.suite import Cell
from attn_zoo.measure.machine import WAIT_ENV, waited_s, worker_prefix
from attn_zoo.measure.profile import is_oom_message
from attn_zoo.names import Registry

Result = dict[str, Any]


class Executor(Protocol):
    name: str
    slots: int

    def submit(self, cell: Cell, artifact_dir: Path) -> Any: ...

    def wait(self, timeout_s: float) -> list[tuple[Any, Result]]: ...

    def shutdown(self) -> None: ...


def _load_builtin_executors() -> None:
    import attn_zoo.grid.ray_executor  # noqa: F401  registers "ray" (Ray itself is imported only when used)


_EXECUTORS: Registry[Callable[..., Executor]] = Registry(
    "executor",
    missing=lambda name, allowed: ConfigError(f"executor {name!r} unknown; allowed: {', '.join(allowed)}"),
    load=_load_builtin_executors,
)


def register_executor(name: str) -> Callable[[Callable[..., Executor]], Callable[..., Executor]]:
    """Register a factory ``(**options) -> Executor`` under ``name`` (``attn-zoo run --executor NAME``)."""
    return _EXECUTORS.register(name)


def executor_names() -> list[str]:
    return sorted(_EXECUTORS)


def create_executor(name: str, **options: Any) -> Executor:
    return _EXECUTORS[name](**options)


# -- in this process ------------------------------------------------------------------------------------
@register_executor("inline")
class InlineExecutor:
    """Cells run one at a time inside the runner's process (for debugging and tests: no isolation, a hard
    crash ends the grid). ``fn(cell, artifact_dir) -> result``; its exceptions become the cell's result."""

    name = "inline"
    slots = 1

    def __init__(self, fn: Callable[..., Result] | None = None, **_: Any):
        self.fn = fn or _run_inline
        self._done: list[tuple[Any, Result]] = []
        self._tokens = itertools.count()

    def submit(self, cell: Cell, artifact_dir: Path) -> Any:
        token = next(self._tokens)
        try:
            result = self.fn(cell, artifact_dir)
        except Exception as exc:  # the cell's failure, not the runner's (KeyboardInterrupt still stops)
            result = failure_result(exc)
        self._done.append((token, result))
        return token

    def wait(self, timeout_s: float) -> list[tuple[Any, Result]]:
        done, self._done = self._done, []
        return done

    def shutdown(self) -> None:
        self._done = []


def _run_inline(cell: Cell, artifact_dir: Path) -> Result:
    from attn_zoo.grid.cell import run_cell

    return run_cell(cell.spec, artifact_dir=artifact_dir)


# -- one process per cell ---------------------------------------------------------------------------------
def _libc_prctl() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if not name:
        return None
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(name, use_errno=True).prctl
    return None


_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1


def _worker_setup(memory_limit_mb: int | None) -> Callable[[], None]:
    """Runs in the child between fork and exec: die with the runner; cap the data segment.

    RLIMIT_DATA (heap and anonymous mappings) rather than RLIMIT_AS: torch maps gigabytes of address space
    for its shared libraries, so an address-space cap fails ``import torch`` before the cell starts.
    """
    limit = memory_limit_mb * 1024 * 1024 if memory_limit_mb else None

    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)  # a SIGKILLed runner takes its workers along
        if limit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    return setup


@register_executor("local")
class LocalExecutor:
    """Each cell in a fresh Python process (``python -m attn_zoo.grid.cell``), ``jobs`` at a time.

    A crash, out-of-memory, NaN or hang fails that cell only. ``timeout_s`` stops a cell that runs too long;
    ``memory_limit_mb`` caps each worker's memory (Linux). ``command`` replaces the worker command line
    (it gets ``SPEC.json RESULT.json ARTIFACT_DIR`` appended, then ``--plugin FILE`` for each of the cell's
    plugin files, :attr:`Cell.plugins`).

    ``work_root`` (the runner passes ``<results>/.cells``) holds each cell's working directory (spec, result,
    log, progress) under one directory per runner; directories of runners that are dead are removed when
    the next one starts there. Without it they go to the system temp directory. :meth:`take_notes` hands
    the runner each worker's first progress report (steps, estimated duration) once. ``machine_lock`` is the
    directory of the lock that keeps timing alone on this machine (:mod:`attn_zoo.measure.machine`); the runner
    sets it to the results directory when it is None.
    """

    name = "local"

    def __init__(
        self,
        jobs: int = 1,
        timeout_s: float | None = None,
        memory_limit_mb: int | None = None,
        command: Sequence[str] | None = None,
        work_root: str | Path | None = None,
        machine_lock: str | Path | None = None,
        **_: Any,
    ):
        if not isinstance(jobs, int) or jobs < 1:
            raise ConfigError(f"executor local: jobs must be a positive integer, got {jobs!r}")
        if memory_limit_mb is not None and memory_limit_mb < 64:
            raise ConfigError(f"--memory-limit-mb must be at least 64, got {memory_limit_mb}")
        self.slots = jobs
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.command = list(command) if command else [sys.executable, "-m", "attn_zoo.grid.cell"]
        self.machine_lock = machine_lock
        self._running: dict[int, dict[str, Any]] = {}
        self._tokens = itertools.count()
        self.work_root = Path(work_root) if work_root else None
        self._own_dir: Path | None = None

    def _cell_dir(self) -> Path:
        if self.work_root is None:
            return Path(tempfile.mkdtemp(prefix="attn_zoo_cell_"))
        if self._own_dir is None or not self._own_dir.is_dir():
            from attn_zoo.grid.store import worker_id
            from attn_zoo.paths import make_dir

            remove_dead_work_dirs(self.work_root)
            own = make_dir(self.work_root / f"runner-{os.getpid()}-{time.time_ns():x}")
            (own / "owner").write_text(worker_id())
            self._own_dir = own
        return Path(tempfile.mkdtemp(prefix="attn_zoo_cell_", dir=self._own_dir))

    def submit(self, cell: Cell, artifact_dir: Path) -> Any:
        tmp = self._cell_dir()
        spec_path, result_path = tmp / "spec.json", tmp / "result.json"
        spec_path.write_text(json.dumps(cell.spec.to_dict()))
        # output to a file, not a pipe: a chatty worker never blocks
        with open(tmp / "worker.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    *worker_prefix(self.machine_lock),
                    *self.command,
                    str(spec_path),
                    str(result_path),
                    str(artifact_dir),
                    *plugin_args(cell.plugins),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(
                    os.environ,
                    PYTHONUNBUFFERED="1",
                    ATTN_ZOO_CELL_JOBS=str(self.slots),
                    **{PROGRESS_ENV: str(tmp / "progress.json"), WAIT_ENV: str(tmp / "machine_wait")},
                ),
                preexec_fn=_worker_setup(self.memory_limit_mb),
                # its own session: Ctrl-C or a SIGTERM to the runner's process group reaches the runner, which
                # stops its workers and hands their cells back, rather than racing them to a "failed" result
                start_new_session=True,
            )
        token = next(self._tokens)
        self._running[token] = {"proc": proc, "tmp": tmp, "start": time.monotonic(), "noted": False}
        return token

    def take_notes(self) -> list[tuple[Any, dict[str, Any]]]:
        """``(token, progress)`` for each running cell whose worker reported its first steps since the last
        call: ``{"steps_done", "total_steps", "seconds_per_step", "estimated_s"}``; once per cell."""
        notes = []
        for token, job in self._running.items():
            path = job["tmp"] / "progress.json"
            if job["noted"] or not path.is_file():
                continue
            with contextlib.suppress(OSError, ValueError):
                notes.append((token, json.loads(path.read_text())))
                job["noted"] = True
        return notes

    def wait(self, timeout_s: float) -> list[tuple[Any, Result]]:
        deadline = time.monotonic() + timeout_s
        while True:
            done = []
            for token, job in list(self._running.items()):
                proc = job["proc"]
                # waiting for the machine (another cell's work, see attn_zoo.measure.machine) is not the cell's time
                ran = time.monotonic() - job["start"] - waited_s(job["tmp"] / "machine_wait")
                timed_out = self.timeout_s is not None and ran > self.timeout_s
                if proc.poll() is None and timed_out:
                    proc.kill()
                    proc.wait()
                if proc.poll() is not None:
                    done.append((token, self._collect(job, timed_out)))
                    del self._running[token]
            if done or not self._running or time.monotonic() >= deadline:
                return done
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _collect(self, job: Mapping[str, Any], timed_out: bool) -> Result:
        proc, tmp = job["proc"], job["tmp"]
        try:
            if timed_out:
                return {
                    "status": "timeout",
                    "reason": f"cell ran past its time limit of {self.timeout_s:g} s",
                    "metrics": {},
                }
            result_path = tmp / "result.json"
            if result_path.exists():
                try:
                    return json.loads(result_path.read_text())
                except (OSError, ValueError) as exc:
                    return {"status": "failed", "reason": f"unreadable worker result: {exc}", "metrics": {}}
            return self._crash_result(proc.returncode, _tail(tmp / "worker.log"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _crash_result(self, code: int, tail: list[str]) -> Result:
        """A worker that died without writing its result (killed, segfault, import failure): the exit code or
        signal and the last error line it printed (warnings left out)."""
        errors = error_lines(tail)
        text = errors[-1] if errors else ""
        if code < 0:
            sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            oom = code == -signal.SIGKILL
            why = " (most often the kernel's out-of-memory killer)" if oom else ""
            return {
                "status": "oom" if oom else "failed",
                "reason": f"worker killed by {sig}{why}" + (f": {text}" if text else ""),
                "metrics": {},
            }
        oom = is_oom_message(" ".join(errors))
        limit = f" under --memory-limit-mb {self.memory_limit_mb}" if self.memory_limit_mb and oom else ""
        return {
            "status": "oom" if oom else "failed",
            "reason": f"worker exited with code {code}{limit}" + (f": {text}" if text else " and printed no error"),
            "metrics": {},
        }

    def shutdown(self) -> None:
        for job in self._running.values():
            with contextlib.suppress(OSError):
                job["proc"].kill()
                job["proc"].wait()
            shutil.rmtree(job["tmp"], ignore_errors=True)
        self._running.clear()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None


PROGRESS_ENV = "ATTN_ZOO_PROGRESS_FILE"  # where a worker reports its first steps (see attn_zoo.train.run)


def remove_dead_work_dirs(work_root: Path) -> list[Path]:
    """Remove the per-runner directories under ``work_root`` whose runner is dead (same host, by pid and start
    time); a live runner's, another host's, or one not yet marked with its owner is left. Returns the removed."""
    from attn_zoo.grid.store import worker_alive

    removed = []
    with contextlib.suppress(OSError):
        for entry in work_root.iterdir():
            try:
                owner = (entry / "owner").read_text().strip()
            except OSError:
                continue
            if worker_alive(owner) is False:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


_WARNING_LINE = re.compile(r"^(\S.*:\d+: )?[A-Z]\w*Warning: ")


def error_lines(lines: Sequence[str]) -> list[str]:
    """The lines a worker printed that are not part of a warning (``file:line: XWarning: ...`` and the
    source line Python prints under it); the last is the failure reason."""
    kept: list[str] = []
    skip_next = False
    for line in lines:
        if skip_next and line.startswith((" ", "\t")):
            skip_next = False
            continue
        skip_next = bool(_WARNING_LINE.match(line))
        if not skip_next and line.strip():
            kept.append(line.strip())
    return kept


def _tail(path: Path, lines: int = 40) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.strip().splitlines()[-lines:] if line.strip()]


def plugin_args(plugins: Sequence[str]) -> list[str]:
    """``--plugin FILE`` for each plugin file a cell's worker loads before it runs the cell."""
    return [arg for file in plugins for arg in ("--plugin", str(file))]


def run_cell_in_worker(
    cell: Cell,
    timeout_s: float | None = None,
    memory_limit_mb: int | None = None,
    artifact_dir: Path | None = None,
    command: Sequence[str] | None = None,
    machine_lock: str | Path | None = None,
) -> Result:
    """Run one cell in a fresh Python process and wait for it; never raises for what happens inside.
    ``command`` and ``machine_lock`` as for :class:`LocalExecutor`."""
    executor = LocalExecutor(1, timeout_s, memory_limit_mb, command, machine_lock)
    try:
        executor.submit(cell, artifact_dir or Path(tempfile.gettempdir()) / "attn_zoo_artifacts")
        while True:
            done = executor.wait(1.0)
            if done:
                return done[0][1]
    finally:
        executor.shutdown()
