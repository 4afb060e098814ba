"""How a training step runs fast without changing what it computes: ``torch.compile`` and thread settings.

**Compile.** ``[train] compile`` is ``"auto"`` (the default), ``true`` or ``false``. ``true`` / ``false`` force
the compiled / eager training step (forward and loss, through ``torch.compile``; the backward is compiled with
it, the optimizer step stays eager). ``"auto"`` looks the mechanism and the device type up in the measured
table ``compile_table.json`` next to this file (written by ``benchmarks/bench_train_compile.py``, with its
provenance: command, machine, date, torch version): the step is compiled only where the table says compile
paid and its loss curve matched eager's. A mechanism or device the table does not list runs eager, as does a
model that mixes mechanisms unless every one of them is listed as compiled. ``compile`` stays out of
:meth:`~attn_zoo.train.recipe.TrainConfig.to_dict` while it is ``"auto"``, so stored cell ids do not change.

**Threads.** Cells that train side by side share the machine's cores: the local executor tells each worker
how many cells run at once (``$ATTN_ZOO_CELL_JOBS``), and :func:`apply_training_threads` gives the training
``floor(cores / jobs)`` intra-op threads (at least one). A thread count the cell's ``[measure] threads`` sets
explicitly wins (the suites that time latency at one thread keep training at one thread, as before).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from attn_zoo.errors import ConfigError

COMPILE_TABLE = Path(__file__).with_name("compile_table.json")
COMPILE_CHOICES = ("auto", True, False)
CELL_JOBS_ENV = "ATTN_ZOO_CELL_JOBS"  # set by the local executor: how many cells run at once on this machine


def check_compile(value: Any) -> Any:
    """``value`` if it is a valid ``[train] compile`` setting, else a one-line :class:`ConfigError`."""
    if value is True or value is False or value == "auto":
        return value
    raise ConfigError(f'train: compile must be "auto", true or false, got {value!r}')


@functools.lru_cache(maxsize=4)
def load_compile_table(path: str | Path = COMPILE_TABLE) -> dict[str, Any]:
    """The measured table: ``{"provenance": {...}, "devices": {device type: {mechanism: {"compile": bool, ...}}}}``."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"compile table {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(table, dict) or not isinstance(table.get("devices"), dict):
        raise ConfigError(f'compile table {path}: expected an object with a "devices" table')
    return table


def table_says_compile(mechanism: str, device: str | torch.device, table: dict[str, Any] | None = None) -> bool:
    """Whether the measured table lists ``mechanism`` on ``device``'s type as faster compiled (and equal)."""
    table = load_compile_table() if table is None else table
    entry = table["devices"].get(torch.device(device).type, {}).get(mechanism)
    return bool(isinstance(entry, dict) and entry.get("compile") is True)


def use_compile(
    setting: Any, mechanism: str | Iterable[str], device: str | torch.device, table: dict[str, Any] | None = None
) -> bool:
    """Compile the training step? ``setting`` is ``[train] compile`` (or a TrainConfig); ``mechanism`` one name
    or every mechanism of the model (``ModelConfig.mechanisms()``)."""
    setting = check_compile(getattr(setting, "compile", setting))
    if setting != "auto":
        return bool(setting)
    names = [mechanism] if isinstance(mechanism, str) else list(mechanism)
    return bool(names) and all(table_says_compile(name, device, table) for name in names)


def compile_available() -> tuple[bool, str]:
    """``(True, "")`` where ``torch.compile`` can run here, else ``(False, one-line reason)``."""
    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    try:
        dynamo = importlib.import_module("torch._dynamo")
    except Exception as exc:  # an incomplete install: any import error means no compile
        return False, f"torch._dynamo cannot be imported ({type(exc).__name__}: {exc})"
    if not dynamo.is_dynamo_supported():
        return False, "torch.compile does not support this Python"
    return True, ""


def training_step(
    net: torch.nn.Module, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], compiled: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of one batch, ``step(images, labels)``: the loss function is chosen once, here; compiled with
    ``torch.compile`` when ``compiled`` (forward, loss and, through AOTAutograd, the backward)."""

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return criterion(net(images), labels)

    if not compiled:
        return step
    ok, reason = compile_available()
    if not ok:
        raise ConfigError(f"train: compile = true, but {reason}")
    return torch.compile(step)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def training_threads(cores: int, jobs: int) -> int:
    """Intra-op threads for one of ``jobs`` cells training at once on ``cores`` cores: ``floor(cores / jobs)``,
    at least one."""
    return max(1, int(cores) // max(1, int(jobs)))


def cell_jobs(environ: Any = None) -> int | None:
    """``$ATTN_ZOO_CELL_JOBS`` as a positive integer, or None where it is unset or not one."""
    value = (os.environ if environ is None else environ).get(CELL_JOBS_ENV)
    try:
        jobs = int(value) if value is not None else None
    except ValueError:
        return None
    return jobs if jobs and jobs > 0 else None


def apply_training_threads(explicit: int | None = None, environ: Any = None, cores: int | None = None) -> dict:
    """Set torch's intra-op threads for training and return the row's fields ``train_threads``,
    ``train_interop_threads`` and ``cell_jobs`` (0 when not run by the local executor).

    ``explicit`` (the cell's ``[measure] threads``) wins; else, under the local executor,
    ``floor(cores / $ATTN_ZOO_CELL_JOBS)``; else torch's setting is left as it is."""
    jobs = cell_jobs(environ)
    if explicit:
        threads = int(explicit)
    elif jobs is not None:
        threads = training_threads(available_cores() if cores is None else cores, jobs)
    else:
        threads = None
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return {
        "train_threads": torch.get_num_threads(),
        "train_interop_threads": torch.get_num_interop_threads(),
        "cell_jobs": jobs or 0,
    }
