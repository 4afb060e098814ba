"""Suite files -> cells, the runners, and the results store."""

from attn_zoo.grid.runner import RunSummary, default_store_path, run_suite
from attn_zoo.grid.store import Store
from attn_zoo.grid.suite import Cell, Suite, SuiteError, load_suite

__all__ = [
    "Cell",
    "RunSummary",
    "Store",
    "Suite",
    "SuiteError",
    "default_store_path",
    "load_suite",
    "run_suite",
]
