"""Suite files -> cells, the executors that run them (local processes, Ray), the runner, and the results store."""

from attn_zoo.grid.executors import InlineExecutor, LocalExecutor, create_executor, register_executor
from attn_zoo.grid.ray_executor import RayExecutor  # registers "ray"; Ray itself is imported only when used
from attn_zoo.grid.runner import RunSummary, default_store_path, run_suite
from attn_zoo.grid.store import Store, StoreError
from attn_zoo.grid.suite import Cell, Suite, SuiteError, load_suite

__all__ = [
    "Cell",
    "InlineExecutor",
    "LocalExecutor",
    "RayExecutor",
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
