"""Checking suite values against what exists: the config dataclasses' fields and types, finite numbers,
output directories that stay inside the results directory, and the one error type, :class:`SuiteError`."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attn_zoo.errors import AttnZooError
from attn_zoo.train.run import YEAR_S
from attn_zoo.typecheck import fits, type_name


class SuiteError(AttnZooError, ValueError):
    """A suite file that cannot run: names the file, the key, the value and what is allowed."""

    def __init__(self, path: str | Path, key: str, message: str):
        self.path, self.key, self.message = str(path), key, message
        # one line whatever the file holds: a key or a message with control characters is shown escaped
        shown_key, shown = _printable(key), _printable(message)
        super().__init__(
            f"{_printable(str(path))}: [{shown_key}] {shown}" if key else f"{_printable(str(path))}: {shown}"
        )


def _printable(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


# keys a section table may hold besides its config fields
_EXTRA_KEYS = {"model": ("preset", "mechanism"), "train": ("seed",)}


def show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def section_fields(section: str) -> dict[str, Any]:
    """Field name -> type annotation of the config behind ``section``."""
    from attn_zoo.backbone.config import ModelConfig
    from attn_zoo.budget import BudgetConfig
    from attn_zoo.data.config import DataConfig
    from attn_zoo.measure.profile import MeasureConfig
    from attn_zoo.train.recipe import TrainConfig

    classes = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "budget": BudgetConfig}
    cls = {**classes, "measure": MeasureConfig}[section]
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}
    if section == "data":
        fields.pop("options", None)
    for extra in _EXTRA_KEYS.get(section, ()):
        fields[extra] = int if extra == "seed" else str
    return fields


def check_table(path: Path, key: str, section: str, table: Mapping[str, Any], named: bool = False) -> None:
    """Every key of ``table`` is a field of ``section`` with a value of its type (data: options pass)."""
    fields = section_fields(section)
    for name, value in table.items():
        if named and name == "name":
            if not isinstance(value, str) or not value:
                raise SuiteError(path, f"{key}.name", f"must be a non-empty string, got {show(value)}")
            continue
        if name not in fields:
            if section == "data":  # source-specific options, checked by the source itself
                check_plain(path, f"{key}.{name}", value)
                continue
            allowed = ", ".join(sorted(fields))
            raise SuiteError(path, f"{key}.{name}", f"unknown key in [{section}]; allowed: {allowed}")
        check_value(path, f"{key}.{name}", value, fields[name])
        if name.endswith("_dir") and section != "data":
            check_output_dir(path, f"{key}.{name}", value)


def check_output_dir(path: Path, key: str, value: Any) -> None:
    """A directory a cell writes to is relative to the results directory and stays inside it."""
    if isinstance(value, str) and (Path(value).is_absolute() or ".." in Path(value).parts or value.startswith("~")):
        raise SuiteError(
            path, key, f"{value!r}: output directories are relative to the results directory (no '..', '/', '~')"
        )


def check_value(path: Path, key: str, value: Any, ann: Any) -> None:
    check_plain(path, key, value)
    if not fits(value, ann):
        raise SuiteError(path, key, f"must be {type_name(ann, 'prose')}, got {show(value)}")


def check_plain(path: Path, key: str, value: Any) -> None:
    """No NaN/inf and no dates anywhere: values must round-trip through JSON unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SuiteError(path, key, f"must be a finite number, got {value!r}")
    if isinstance(value, (list, tuple)):
        for item in value:
            check_plain(path, key, item)
    elif isinstance(value, dict):
        for k, item in value.items():
            check_plain(path, f"{key}.{k}", item)
    elif not isinstance(value, (str, int, float, bool)):
        raise SuiteError(path, key, f"must be a number, string, boolean, list or table, got {show(value)}")


# data keys naming files or directories to read: `root` of every source, the split paths of imagefolder
DATA_PATH_KEYS = ("root", "train", "val", "test")


def data_path(path: Path, key: str, value: str) -> str:
    """A data path of a suite: only read, never written. A relative one resolves against the suite file's
    directory (absolute and ``~`` paths stay as written); ``..`` is refused, so a suite cannot point out of
    its own tree by accident."""
    import os

    expanded = os.path.expandvars(os.path.expanduser(value))
    if ".." in Path(expanded).parts:
        raise SuiteError(
            path,
            key,
            f"{value!r}: '..' is not allowed in data paths; give the directory as an absolute path or relative "
            "to the suite file without '..'",
        )
    if Path(expanded).is_absolute():
        return value
    return os.path.abspath(os.path.join(Path(path).absolute().parent, expanded))


# Duration floor of one training step: no step of the harness's models (forward, backward, optimizer) runs
# faster than this on any device; docs/guarantees.md gives the measurement it sits far below.
MIN_STEP_S = 1e-4


def check_duration(path: Path, train: Any, data: Any, device: str) -> None:
    """Refuse a step or epoch count that cannot finish within a year even at :data:`MIN_STEP_S` per step
    (``attn-zoo run --allow-long`` insists); the worker checks again with its measured step time."""
    steps: float | None = None
    key = "train.steps"
    if train.steps is not None:
        steps = float(train.steps)
    elif train.epochs is not None:
        key = "train.epochs"
        size = getattr(data, "train_size", None) if data is not None else None
        per_epoch = max(1, int(size) // max(1, int(train.batch_size))) if size else 1
        steps = float(train.epochs) * per_epoch
    if steps is None or steps * MIN_STEP_S <= YEAR_S:
        return
    years = steps * MIN_STEP_S / YEAR_S
    value = train.steps if key == "train.steps" else train.epochs
    raise SuiteError(
        path,
        key,
        f"{value!r} means at least {steps:.3g} steps, more than {years:.3g} years at {MIN_STEP_S * 1e3:g} ms a "
        f"step on {device}; allowed: at most {YEAR_S / MIN_STEP_S:.3g} steps (pass --allow-long to insist)",
    )
