"""Suite files -> cells, the executors that run them (local processes, Ray), the runner, and the results store.

The names below are imported on first use (module ``__getattr__``): ``attn_zoo.grid.store`` alone, which the
read-only commands need, loads no torch."""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "InlineExecutor": "attn_zoo.grid.executors",
    "LocalExecutor": "attn_zoo.grid.executors",
    "create_executor": "attn_zoo.grid.executors",
    "register_executor": "attn_zoo.grid.executors",
    "RayExecutor": "attn_zoo.grid.ray_executor",
    "RunSummary": "attn_zoo.grid.runner",
    "default_store_path": "attn_zoo.grid.runner",
    "run_suite": "attn_zoo.grid.runner",
    "Store": "attn_zoo.grid.store",
    "StoreError": "attn_zoo.grid.store",
    "Cell": "attn_zoo.grid.suite",
    "Suite": "attn_zoo.grid.suite",
    "SuiteError": "attn_zoo.grid.suite",
    "load_suite": "attn_zoo.grid.suite",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attn_zoo.grid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = sorted(_API)
