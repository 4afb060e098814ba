"""Timing owns the machine: no latency, throughput or memory figure is taken while another cell of the run
computes on the same machine.

Two lock files serialise measurement against everything else: ``LOCK`` (``.attn_zoo-machine.lock``) and its
turnstile (``.attn_zoo-machine.turn``), in the results directory for the local executor and in the node's
temporary directory for the Ray executor (one per node and user: a shared results directory may be on a
network file system, where one lock would serialise different machines).

- A cell's worker process holds ``LOCK`` *shared* for its whole life, taken before Python imports anything
  heavy: the worker command is prefixed by a few lines of stdlib Python (:func:`worker_prefix`) that take the
  lock and then ``exec`` the real worker, which inherits it.
- Measuring takes ``LOCK`` *exclusive* (:func:`measuring`): the worker drops its shared hold, waits on the
  turnstile, waits until no other worker holds ``LOCK``, times, then goes back to shared.
- Training steps aside between steps (:func:`yield_to_measurement`): when a measurement waits, a training
  worker drops its shared hold until the measurement has timed, so a measurement waits for one step of each
  other cell, not for the end of their training.
- The turnstile gives a waiting measurement priority: a measurement holds it while it waits for ``LOCK``, and
  a starting worker passes it (takes and drops it) before it asks for its shared hold, so new cells cannot
  starve a measurement that waits. Nobody waits for ``LOCK`` while holding the turnstile except the one
  measurement, and a measurement goes back to shared by a downgrade, so there is no cycle.

A worker's own flock is released by the kernel when its process ends, however it ends (kill -9 included), so
a dead cell never blocks the machine. Without the environment variable (the inline executor, ``attn-zoo
bench``, the Python API) :func:`measuring` does nothing. See docs/measurement.md.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".attn_zoo-machine.lock"
TURN_NAME = ".attn_zoo-machine.turn"
ENV = "ATTN_ZOO_MACHINE_LOCK"  # "FD:DEV:INODE:TURNSTILE_PATH" in a worker that holds LOCK shared on FD

# run as `python -c HOLD LOCK TURN CMD...`: pass the turnstile, take LOCK shared, then exec CMD with it held
HOLD = """
import fcntl, os, sys
lock, turn, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
t = os.open(turn, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(t, fcntl.LOCK_EX)
fcntl.flock(t, fcntl.LOCK_UN)
os.close(t)
fcntl.flock(fd, fcntl.LOCK_SH)
os.set_inheritable(fd, True)
st = os.fstat(fd)
os.environ["ATTN_ZOO_MACHINE_LOCK"] = f"{fd}:{st.st_dev}:{st.st_ino}:{turn}"
os.execvp(cmd[0], cmd)
"""


def lock_dir_for_node() -> Path:
    """Where a Ray node's cells share their lock: this node's temporary directory."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"attn_zoo-machine-{os.getuid() if hasattr(os, 'getuid') else 0}"


def worker_prefix(lock_dir: str | Path | None) -> list[str]:
    """The command prefix that makes a worker hold the machine lock of ``lock_dir`` shared (``[]``: none)."""
    if lock_dir is None or not sys.platform.startswith(("linux", "darwin")):
        return []
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-c", HOLD, str(lock_dir / LOCK_NAME), str(lock_dir / TURN_NAME)]


@contextlib.contextmanager
def measuring() -> Iterator[dict[str, float]]:
    """Hold the machine alone while the block runs (a no-op outside a locked worker).

    Yields a dict that gets ``machine_wait_s`` (seconds waited for the other cells' work to end), and
    ``cpu_load_before_1m`` / ``cpu_load_after_1m`` (the 1-minute load average at the start and the end of
    the block) once the block ends."""
    info: dict[str, float] = {}
    held = _held()
    start = time.perf_counter()
    if held is not None:
        import fcntl

        fd, turn_path = held
        _note_wait(waiting_since=time.monotonic())
        fcntl.flock(fd, fcntl.LOCK_UN)
        turn = os.open(turn_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(turn, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(turn, fcntl.LOCK_UN)
        except BaseException:
            os.close(turn)
            raise
        finally:
            _note_wait(waited=time.perf_counter() - start)
    info["machine_wait_s"] = time.perf_counter() - start
    load = _load()
    if load is not None:
        info["cpu_load_before_1m"] = load
    try:
        yield info
    finally:
        load = _load()
        if load is not None:
            info["cpu_load_after_1m"] = load
        if held is not None:
            os.close(turn)
            fcntl.flock(fd, fcntl.LOCK_SH)  # back to computing (a downgrade: never waits on a measurement)


_TURN_FD: dict[int, int] = {}


def yield_to_measurement() -> float:
    """Step aside for a waiting measurement: training calls this between steps. When another cell's
    measurement waits for the machine (it holds the turnstile), drop this worker's shared hold, pass the
    turnstile once the measurement has the machine, and take the shared hold back when it has timed. Returns
    the seconds paused: one non-blocking ``flock`` and 0 when nobody waits, and a no-op outside a locked
    worker. So a measurement waits at most one training step of each other cell, not their whole training."""
    held = _held()
    if held is None:
        return 0.0
    import fcntl

    fd, turn_path = held
    pid = os.getpid()
    if pid not in _TURN_FD:
        _TURN_FD[pid] = os.open(turn_path, os.O_RDWR | os.O_CREAT, 0o644)
    turn = _TURN_FD[pid]
    try:
        fcntl.flock(turn, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:  # a measurement (or a starting worker, for an instant) holds the turnstile
        pass
    else:
        fcntl.flock(turn, fcntl.LOCK_UN)
        return 0.0
    start = time.perf_counter()
    _note_wait(waiting_since=time.monotonic())
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
        fcntl.flock(turn, fcntl.LOCK_SH)  # granted once the measurement holds the machine and drops the turnstile
        fcntl.flock(turn, fcntl.LOCK_UN)
        fcntl.flock(fd, fcntl.LOCK_SH)  # granted when the measurement goes back to shared
    finally:
        waited = time.perf_counter() - start
        _note_wait(waited=waited)
    return waited


# The executor's time limit of a cell does not count the time it waits for the machine: a worker notes its
# waiting in the file named by WAIT_ENV (``ACCUMULATED_S WAITING_SINCE``, a monotonic time or -1).
WAIT_ENV = "ATTN_ZOO_MACHINE_WAIT"
_WAITED = {"total": 0.0}


def _note_wait(waiting_since: float = -1.0, waited: float | None = None) -> None:
    path = os.environ.get(WAIT_ENV)
    if waited is not None:
        _WAITED["total"] += waited
    if not path:
        return
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(f"{_WAITED['total']} {waiting_since}")
        os.replace(tmp, path)
    except OSError:  # the time limit then counts the wait; the measurement itself is unaffected
        pass


def waited_s(path: str | Path) -> float:
    """Seconds a worker has waited for the machine so far, from its wait file (0 when there is none)."""
    try:
        total, since = (float(v) for v in Path(path).read_text().split())
    except (OSError, ValueError):
        return 0.0
    return total + (time.monotonic() - since if since >= 0 else 0.0)


def locked_worker() -> bool:
    """Whether this process is a worker that holds the machine lock (measurements here own the machine)."""
    return _held() is not None


_HELD: dict[int, tuple[int, str] | None] = {}


def _held() -> tuple[int, str] | None:
    """The lock this process holds; read once and taken out of the environment, so that processes this
    worker starts (a memory probe) do not take its descriptor number for theirs."""
    pid = os.getpid()
    if pid not in _HELD:
        _HELD[pid] = _parse(os.environ.pop(ENV, ""))
    return _HELD[pid]


def _parse(value: str) -> tuple[int, str] | None:
    """The descriptor and turnstile of ``ENV``, if the descriptor is still the lock file (a process that
    inherited the variable but not the descriptor, e.g. a torchrun rank, is no locked worker)."""
    parts = value.split(":", 3)
    if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]) or not parts[3]:
        return None
    fd, dev, ino, turn = int(parts[0]), int(parts[1]), int(parts[2]), parts[3]
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (fd, turn) if (st.st_dev, st.st_ino) == (dev, ino) else None


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on Windows
        return None


_held()  # read the inherited lock at import, before this process starts any of its own
