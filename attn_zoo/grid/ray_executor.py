"""Cells as Ray tasks: one grid fanned out over a Ray cluster (``attn-zoo run SUITE --executor ray``).

The runner stays where it is: it claims each cell in the store, heartbeats, records every result and
resumes, exactly as with the local executor. This executor only carries a claimed cell to a Ray node and
its result back. On the node the cell runs as it does locally, in its own Python process
(:func:`~attn_zoo.grid.executors.run_cell_in_worker`), so a crash, out-of-memory, NaN loss or ``--timeout``
fails that cell only, with the same statuses and reasons.

Resources: each cell asks Ray for ``cpus`` CPUs and ``gpus`` GPUs (``[suite] executor = { cpus = 4,
gpus = 1 }``; default 1 CPU, no GPU). Ray sets ``CUDA_VISIBLE_DEVICES`` (and ``OMP_NUM_THREADS``) for what it
grants, and the cell's process inherits them. ``jobs`` caps the cells in flight; without it, as many as
the cluster holds at the moment (read again every few seconds, so nodes that join are used).

A lost worker (its process or its node died; not the cell's own failure) makes Ray run the task again, up
to ``max_retries`` times. That cannot write a row twice: only the runner writes, once per claimed cell,
and a Ray task returns one result however often it ran. When the retries are spent the cell is
``failed`` with Ray's reason, and ``attn-zoo run --retry-failed`` runs it again.

Files: the cell writes its artifacts straight into the results directory when the node sees it (the same
machine, or a shared file system; told by a marker file the runner writes there first); otherwise into a
temporary directory on the node, and the named artifacts travel back with the result.

Plugins: the plugin files given with ``--plugin`` travel with each cell (:attr:`Cell.plugins`, a task argument)
and the node's cell worker loads them; a ``$ATTN_ZOO_PLUGINS`` the user set is passed on in the task's
``runtime_env`` ``env_vars``. The files must exist at the same path on every node.

Ray is an optional extra (``pip install 'attn-zoo[ray]'``), imported only when this executor is created.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attn_zoo.errors import ConfigError
from attn_zoo.grid.executors import Result, register_executor, run_cell_in_worker
from attn_zoo.grid.suite import Cell
from attn_zoo.measure.machine import lock_dir_for_node
from attn_zoo.registry import PLUGINS_ENV

INSTALL_HINT = "pip install 'attn-zoo[ray]'"
MARKER = ".attn_zoo-ray-runner"  # written by the runner into a cell's artifact directory before submitting
SLOTS_REFRESH_S = 5.0


def unreachable(address: str, timeout_s: float = 10.0) -> str | None:
    """Why ``HOST:PORT`` (or ``ray://HOST:PORT``) takes no TCP connection, or None when it does (or when the
    address is not of that form, e.g. ``auto``)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def import_ray() -> Any:
    """``import ray``, or one clear error naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"--executor ray needs Ray, which is not installed ({exc}); install it: {INSTALL_HINT}"
        ) from None
    return ray


def _check_quantity(name: str, value: Any, minimum_exclusive: bool) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and (value > 0 if minimum_exclusive else value >= 0) and (value <= 1 or float(value).is_integer())
    if not ok:
        low = "> 0" if minimum_exclusive else ">= 0"
        raise ConfigError(f"executor ray: {name} must be a number {low} (above 1 a whole number), got {value!r}")
    return value


@register_executor("ray")
class RayExecutor:
    """Each cell a Ray task asking for ``cpus`` CPUs and ``gpus`` GPUs; see the module docstring.

    ``address`` is the cluster to join (``ray start --head`` prints it; default: ``$RAY_ADDRESS``, a cluster
    started on this machine, else a new local one). When Ray is already initialised in this process, that
    connection is used and left open. ``timeout_s``, ``memory_limit_mb`` and ``command`` apply to each
    cell's process on its node, as for :class:`~attn_zoo.grid.executors.LocalExecutor`.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        jobs: int | None = None,
        cpus: float = 1,
        gpus: float = 0,
        max_retries: int = 2,
        timeout_s: float | None = None,
        memory_limit_mb: int | None = None,
        command: Sequence[str] | None = None,
        **_: Any,
    ):
        if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
            raise ConfigError(f"executor ray: jobs must be a positive integer, got {jobs!r}")
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ConfigError(f"executor ray: max_retries must be an integer >= 0, got {max_retries!r}")
        self.cpus = _check_quantity("cpus", cpus, True)
        self.gpus = _check_quantity("gpus", gpus, False)
        self.jobs, self.max_retries = jobs, max_retries
        self.timeout_s, self.memory_limit_mb = timeout_s, memory_limit_mb
        self.command = list(command) if command else None
        ray = self._ray = import_ray()
        self._owns = not ray.is_initialized()
        if self._owns:
            self._connect(address)
        try:
            self._check_fits()
        except BaseException:
            self.shutdown()
            raise
        self._task = ray.remote(run_on_node).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=max_retries, retry_exceptions=False
        )
        self._session = uuid.uuid4().hex
        self._running: dict[Any, tuple[int, Path]] = {}
        self._tokens = itertools.count()
        self._slots, self._slots_at = 1, -float("inf")

    def _connect(self, address: str | None) -> None:
        target = address or os.environ.get("RAY_ADDRESS")
        problem = unreachable(target) if target else None
        if problem:  # Ray itself would retry a dead address for many minutes
            raise ConfigError(
                f"cannot reach the Ray cluster at {target}: {problem}; start one with `ray start --head` and pass "
                "the address it prints (see docs/scaling.md)"
            )
        try:
            # no INFO lines and no worker output on the runner's terminal: the progress bar owns it
            self._ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError, self._ray.exceptions.RayError) as exc:
            where = f"at {address}" if address else "(no --address; $RAY_ADDRESS or a local one)"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"cannot connect to the Ray cluster {where}: {first}. Start one with `ray start --head` and pass "
                "the address it prints; a cluster with token authentication needs RAY_AUTH_MODE=token and its "
                "token here (see docs/scaling.md)"
            ) from None

    def _nodes(self) -> list[dict[str, float]]:
        return [dict(n.get("Resources") or {}) for n in self._ray.nodes() if n.get("Alive")]

    def _check_fits(self) -> None:
        """A cell no node can hold would wait forever: say so before anything runs."""
        nodes = self._nodes()
        if any(n.get("CPU", 0) >= self.cpus and n.get("GPU", 0) >= self.gpus for n in nodes):
            return
        have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes) or "no live node"
        raise ConfigError(
            f"executor ray: no node of the cluster can hold one cell, which asks for {self.cpus:g} CPUs and "
            f"{self.gpus:g} GPUs (nodes: {have}); lower [suite] executor cpus/gpus or add a larger node"
        )

    @property
    def slots(self) -> int:
        """Cells in flight: ``jobs``, or as many cells as the cluster's CPUs and GPUs hold now."""
        if self.jobs is not None:
            return self.jobs
        if time.monotonic() - self._slots_at > SLOTS_REFRESH_S:
            total = self._ray.cluster_resources()
            fits = [total.get("CPU", 0) // self.cpus]
            if self.gpus:
                fits.append(total.get("GPU", 0) // self.gpus)
            self._slots, self._slots_at = max(1, int(min(fits))), time.monotonic()
        return self._slots

    def submit(self, cell: Cell, artifact_dir: Path) -> Any:
        # absolute: a Ray worker's working directory is not the runner's
        from attn_zoo.paths import make_dir, write_text

        artifact_dir = make_dir(Path(artifact_dir).absolute())  # checked against the run's write roots
        write_text(artifact_dir / MARKER, self._session)
        user_plugins = os.environ.get(PLUGINS_ENV)  # the user's own setting, as on this machine
        task = self._task.options(runtime_env={"env_vars": {PLUGINS_ENV: user_plugins}}) if user_plugins else self._task
        ref = task.remote(
            cell.spec.to_dict(),
            str(artifact_dir),
            self._session,
            self.timeout_s,
            self.memory_limit_mb,
            self.command,
            list(cell.plugins),
        )
        token = next(self._tokens)
        self._running[ref] = (token, artifact_dir)
        return token

    def wait(self, timeout_s: float) -> list[tuple[Any, Result]]:
        if not self._running:
            return []
        refs = list(self._running)
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=max(0.0, timeout_s))
        if ready:  # everything else finished by now, too
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        done = []
        for ref in ready:
            token, artifact_dir = self._running.pop(ref)
            done.append((token, self._collect(ref, artifact_dir)))
        return done

    def _collect(self, ref: Any, artifact_dir: Path) -> Result:
        try:
            result, shipped = self._ray.get(ref)
            if shipped is not None:
                result = unpack_artifacts(result, shipped, artifact_dir)
            return result
        except self._ray.exceptions.RayError as exc:
            return self._error_result(exc)
        finally:
            with contextlib.suppress(OSError):
                (artifact_dir / MARKER).unlink()
                artifact_dir.rmdir()  # only when the cell wrote nothing there

    def _error_result(self, exc: BaseException) -> Result:
        """What Ray raises for a task: the worker or node lost (after the retries), Ray's out-of-memory
        killer, cancellation, or an error on the node outside the cell's process (e.g. attn_zoo missing)."""
        errors = self._ray.exceptions
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        if isinstance(exc, errors.OutOfMemoryError):
            return {
                "status": "oom",
                "reason": f"Ray's memory monitor killed the cell's worker: {lines[0]}",
                "metrics": {},
            }
        if isinstance(exc, errors.TaskCancelledError):
            return {"status": "failed", "reason": "the cell's Ray task was cancelled", "metrics": {}}
        if isinstance(exc, errors.RayTaskError):  # raised on the node: its last line names the error
            return {"status": "failed", "reason": f"on the Ray node: {lines[-1] if lines else exc}", "metrics": {}}
        tries = self.max_retries + 1
        return {
            "status": "failed",
            "reason": f"Ray lost the cell's worker ({tries} tries): {type(exc).__name__}: {lines[0] if lines else ''}",
            "metrics": {},
        }

    def shutdown(self) -> None:
        for ref, (_, artifact_dir) in list(getattr(self, "_running", {}).items()):
            with contextlib.suppress(Exception):  # the worker dies, and its cell process with it (PDEATHSIG)
                self._ray.cancel(ref, force=True)
            with contextlib.suppress(OSError):
                (artifact_dir / MARKER).unlink()
        if getattr(self, "_running", None):
            self._running.clear()
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns = False


# -- on the node ----------------------------------------------------------------------------------------
def run_on_node(
    spec: Mapping[str, Any],
    artifact_dir: str,
    session: str,
    timeout_s: float | None = None,
    memory_limit_mb: int | None = None,
    command: Sequence[str] | None = None,
    plugins: Sequence[str] = (),
) -> tuple[Result, dict[str, tuple[str, bytes]] | None]:
    """The Ray task: run one cell in its own process on this node; returns ``(result, shipped)``.
    ``plugins``: the plugin files the cell's worker loads (``--plugin``).

    ``shipped`` is ``None`` when the cell wrote into the runner's ``artifact_dir`` (this node sees it: its
    marker holds ``session``), else ``{name: (relative path, bytes)}`` of the named artifacts, written from a
    temporary directory here.
    """
    target = Path(artifact_dir)
    try:
        shared = (target / MARKER).read_text() == session
    except OSError:
        shared = False
    local = target if shared else Path(tempfile.mkdtemp(prefix="attn_zoo_ray_cell_"))
    try:
        # timing owns the machine per node: this node's cells share one lock in its temporary directory
        result = run_cell_in_worker(
            Cell(spec, tuple(plugins)), timeout_s, memory_limit_mb, local, command, lock_dir_for_node()
        )
        return (result, None) if shared else pack_artifacts(result, local)
    finally:
        if not shared:
            shutil.rmtree(local, ignore_errors=True)


def pack_artifacts(result: Result, local: Path) -> tuple[Result, dict[str, tuple[str, bytes]]]:
    """The named artifacts under ``local`` as ``{name: (path relative to local, bytes)}``; others are left
    out of the result (the runner would drop a path outside the results directory anyway)."""
    shipped: dict[str, tuple[str, bytes]] = {}
    root = local.resolve()
    for name, path in (result.get("artifacts") or {}).items():
        full = Path(str(path)).resolve()
        if full.is_file() and full.is_relative_to(root):
            shipped[str(name)] = (str(full.relative_to(root)), full.read_bytes())
    return {**result, "artifacts": {}}, shipped


def unpack_artifacts(result: Result, shipped: Mapping[str, tuple[str, bytes]], artifact_dir: Path) -> Result:
    """Write shipped artifacts under ``artifact_dir`` (never outside it) and name them in the result."""
    artifacts = dict(result.get("artifacts") or {})
    root = artifact_dir.resolve()
    for name, (relative, data) in shipped.items():
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            continue
        from attn_zoo.paths import write_bytes

        write_bytes(path, data)  # atomic, after the one write check
        artifacts[name] = str(path)
    return {**result, "artifacts": artifacts}
