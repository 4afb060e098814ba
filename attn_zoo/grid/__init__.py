"""Suite files -> cells, the executors that run them, the runner, and the results store."""

from attn_zoo.grid.executors import InlineExecutor, LocalExecutor, create_executor, register_executor
from attn_zoo.grid.runner import RunSummary, default_store_path, run_suite
from attn_zoo.grid.store import Store, StoreError
from attn_zoo.grid.suite import Cell, Suite, SuiteError, load_suite

__all__ = [
    "Cell",
    "InlineExecutor",
    "LocalExecutor",
    "RunSummary",
    "Store",
    "StoreError",
    "Suite",
    "SuiteError",
    "create_executor",
    "default_store_path",
    "load_suite",
    "register_executor",
    "run_suite",
]
