"""Suite files (TOML) -> validated cells, before any compute.

A suite names a base model, the data, the training recipe, the budget and what to measure, then a grid of
factors combined as a cartesian product (or zipped). Example::

    [suite]
    name = "quick"
    description = "global vs Swin, two seeds"
    mode = "product"            # or "zip" (factors zipped; seeds still multiply every combination)
    include = ["base.toml"]     # optional, relative to this file; this file's values win
    plugins = ["my_mech.py"]    # optional: plugin files this suite needs (loaded only by --plugin)

    [model]
    preset = "zoo_s32"          # any ModelConfig field may follow; `mechanism` names the mixer

    [data]
    source = "synthetic"

    [train]
    epochs = 2

    [budget]
    metric = "macs"
    target = 2e7

    [measure]
    latency = true

    [grid]
    mechanism = ["global", "swin"]
    seed = [0, 1]
    "knobs.window" = [4, 8]     # applied to the mechanisms that have the knob
    "model.img_size" = [32, 64] # any `section.field` of model/data/train/budget/measure
    budget = [{ name = "small", metric = "macs", target = 2e7 }, { name = "large", metric = "macs", target = 8e7 }]
    data = [{ name = "bars", source = "synthetic" }]   # a section as a factor: each table merges over it

    [mechanisms.swin]           # knobs of one mechanism (per-stage: { per_stage = [8, 4, 2, 1] })
    window = 4

    [overrides.swin.train]      # per-mechanism (or per-preset) values of any section
    lr = 5e-4

Precedence, lowest first: section defaults, ``[overrides.NAME.SECTION]``, grid factors; for knobs: the
mechanism's defaults, ``[mechanisms.NAME]``, ``grid."knobs.*"``. A cell is keyed by a hash of its resolved
configuration and the code version; the same configuration reached twice is one cell.

Nothing in a suite file is evaluated as code (plugin files are loaded only by ``attn-zoo run --plugin``);
every key is checked against what exists and every error is one line, ``FILE: [key] message``, naming the
value and what is allowed. See docs/suites.md.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attn_zoo
from attn_zoo.backbone.config import MixerSpec, ModelConfig, parse_knob_value
from attn_zoo.backbone.presets import list_presets, resolve_config
from attn_zoo.budget import Budget
from attn_zoo.errors import AttnZooError
from attn_zoo.grid.checks import (
    DATA_PATH_KEYS,
    SuiteError,
    check_duration,
    check_output_dir,
    check_plain,
    check_table,
    check_value,
    data_path,
    section_fields,
    show,
)
from attn_zoo.measure.profile import MEASURE_DEFAULTS, resolve_measure  # noqa: F401 (re-exported)
from attn_zoo.registry import PerStage, get_mechanism, list_mechanisms
from attn_zoo.train.data import DataConfig
from attn_zoo.train.recipe import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = ("suite", "model", "data", "train", "budget", "measure", "grid", "mechanisms", "overrides", "report")
CONFIG_SECTIONS = ("model", "data", "train", "budget", "measure")
SUITE_KEYS = ("name", "description", "mode", "include", "executor", "plugins")
GRID_TARGETS = ("model", "data", "train", "budget", "measure", "knobs")
MAX_CELLS = 10_000
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid, fully resolved: what runs in one worker process and one result row.

    ``spec["factors"]`` holds the grid values that made this cell (for labels and plots); it is not part of
    the cell's identity.
    """

    spec: Mapping[str, Any]

    @property
    def cell_id(self) -> str:
        return cell_hash(self.spec)

    @property
    def config_id(self) -> str:
        """The configuration without the seed (and the code version): seeds of one config share it."""
        return config_hash(self.spec)

    @property
    def label(self) -> str:
        return self.spec["label"]

    @property
    def mechanism(self) -> str:
        return self.spec["mechanism"]

    @property
    def seed(self) -> int:
        return self.spec["seed"]

    @property
    def factors(self) -> dict[str, Any]:
        return dict(self.spec.get("factors") or {})

    @property
    def variant(self) -> str:
        """The factor values other than mechanism and seed, e.g. ``"window=4, img_size=64"``."""
        return variant_name(self.factors)

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.spec["model"])


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    path: str
    description: str
    text: str
    cells: tuple[Cell, ...]
    raw: Mapping[str, Any]
    executor: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    factors: tuple[str, ...] = ()


def cell_hash(spec: Mapping[str, Any]) -> str:
    """Hash of the resolved configuration and the code version: a changed cell is a new cell."""
    core = {k: v for k, v in spec.items() if k != "factors"}
    payload = json.dumps({"spec": core, "code": attn_zoo.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def config_hash(spec: Mapping[str, Any]) -> str:
    """Hash of the resolved configuration without the seed: the key that seeds are aggregated over."""
    core = {k: v for k, v in spec.items() if k not in ("factors", "seed")}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


def variant_name(factors: Mapping[str, Any]) -> str:
    keys = [k for k in factors if k not in ("mechanism", "seed")]
    shorts = [k.rpartition(".")[2] for k in keys]
    parts = []
    for key, short in zip(keys, shorts):
        name = short if shorts.count(short) == 1 else key
        parts.append(f"{name}={_display(factors[key])}")
    return ", ".join(parts)


def _display(value: Any) -> str:
    if isinstance(value, Mapping) and set(value) == {"per_stage"} and isinstance(value["per_stage"], list):
        return "/".join(_display(v) for v in value["per_stage"])
    if isinstance(value, Mapping):
        if "name" in value:
            return str(value["name"])
        return " ".join(f"{k}={_display(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_display(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# -- reading --------------------------------------------------------------------------------------------
def load_suite(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    plugins: tuple[str | Path, ...] = (),
    allow_long: bool = False,
) -> Suite:
    """Read, merge includes, validate and expand a suite file. Raises :class:`SuiteError`, nothing else
    for a bad file; writes nothing.

    ``overrides`` are ``{"train.lr": 1e-3}`` (``attn-zoo run --set``). ``plugins`` are the plugin files the
    user loaded explicitly (``--plugin``): a suite's ``[suite] plugins`` list only declares what it needs,
    and each declared file must be among them; a suite file never causes code to run.

    Relative data paths (``[data] root``) in the file resolve against the file's directory, those given in
    ``overrides`` against the working directory; a data path is only read. A training budget that cannot
    finish within a year is refused unless ``allow_long`` (``attn-zoo run --allow-long``).
    """
    path = Path(path)
    texts: list[tuple[Path, str]] = []
    raw = _read(path, seen=(), texts=texts)
    for dotted, value in (overrides or {}).items():
        if dotted.partition(".")[::2] in [("data", k) for k in DATA_PATH_KEYS] and isinstance(value, str) and value:
            value = os.path.abspath(os.path.expanduser(value))  # typed on a command line: the working directory's
        _set_override(path, raw, dotted, value)
    suite = _build(path, raw, plugins, allow_long)
    # the text a run records: this file, then each included file under a comment naming it
    text = texts[-1][1] + "".join(f"\n# ---- included file {p} ----\n{t}" for p, t in texts[:-1])
    return dataclasses.replace(suite, text=text)


def _read(path: Path, seen: tuple[Path, ...], texts: list[tuple[Path, str]]) -> dict[str, Any]:
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:
        raise SuiteError(path, "", f"cannot resolve the path: {exc}") from None
    if resolved in seen:
        raise SuiteError(seen[-1], "suite.include", f"{str(path)!r} includes itself (include cycle)")
    try:
        if not path.is_file():
            raise SuiteError(path, "", "file not found" if not path.exists() else "not a regular file")
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(path, "", f"is not valid TOML: {exc}") from None
    except (OSError, ValueError) as exc:  # permission denied, a name the OS rejects (NUL byte), ...
        raise SuiteError(path, "", f"cannot be read: {exc}") from None
    unknown = set(data) - set(SECTIONS)
    if unknown:
        key = sorted(unknown)[0]
        raise SuiteError(path, key, f"unknown section {key!r}; allowed: {', '.join(SECTIONS)}")
    for section, value in data.items():
        if not isinstance(value, dict):
            raise SuiteError(path, section, f"must be a table, got {show(value)}")
    if "grid" in data:
        data["grid"] = _flatten_grid(path, data["grid"])
    includes = data.get("suite", {}).pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise SuiteError(path, "suite.include", f"must be a list of file names, got {show(includes)}")
    merged: dict[str, Any] = {}
    for include in includes:
        target = path.parent / include
        if not target.is_file():
            what = "does not exist" if not target.exists() else "is not a regular file"
            raise SuiteError(path, "suite.include", f"{include!r} {what} (looked for {target})")
        _merge(merged, _read(target, seen + (resolved,), texts))
    merged.get("suite", {}).pop("name", None)  # the including file names the suite
    _merge(merged, data)
    texts.append((path, text))
    return merged


def _flatten_grid(path: Path, grid: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``[grid.knobs] window = [...]`` and ``knobs.window = [...]`` are the factor ``"knobs.window"``."""
    flat: dict[str, Any] = {}
    for key, value in grid.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if prefix:
                raise SuiteError(path, f"grid.{name}", "factors nest at most one level (e.g. knobs.window)")
            flat.update(_flatten_grid(path, value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _merge(base: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _set_override(path: Path, raw: dict[str, Any], dotted: str, value: Any) -> None:
    """``--set train.lr=1e-3``; ``--set grid.knobs.window=[4]`` sets the factor ``knobs.window``."""
    parts = dotted.split(".")
    if not all(parts) or parts[0] not in SECTIONS:
        raise SuiteError(path, dotted, f"--set: unknown key; it must start with one of {', '.join(SECTIONS)}")
    if dotted == "suite.include":
        raise SuiteError(path, dotted, "includes are read from the file; --set cannot change them")
    if parts[0] == "grid" and len(parts) > 1:
        parts = ["grid", ".".join(parts[1:])]
    node = raw
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SuiteError(path, ".".join(parts[: i + 1]), f"--set {dotted}: {show(node)} is not a table")
    node[parts[-1]] = value


# -- checking values against dataclass fields -----------------------------------------------------------
# -- building the cells ---------------------------------------------------------------------------------
def _build(path: Path, raw: Mapping[str, Any], plugins: tuple[str | Path, ...] = (), allow_long: bool = False) -> Suite:
    suite_table = dict(raw.get("suite", {}))
    unknown = set(suite_table) - set(SUITE_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise SuiteError(path, f"suite.{key}", f"unknown key; allowed: {', '.join(SUITE_KEYS)}")
    _check_plugins(path, suite_table.get("plugins", []), plugins)
    name = suite_table.get("name", path.stem)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SuiteError(
            path, "suite.name", f"{show(name)} must be a simple name: letters, digits, _ and - (at most 64)"
        )
    description = suite_table.get("description", "")
    if not isinstance(description, str):
        raise SuiteError(path, "suite.description", f"must be a string, got {show(description)}")
    mode = suite_table.get("mode", "product")
    if mode not in ("product", "zip"):
        raise SuiteError(path, "suite.mode", f"{show(mode)} unknown; allowed: product, zip")
    executor = _check_executor(path, suite_table.get("executor", {}))

    for section in CONFIG_SECTIONS:
        check_table(path, section, section, raw.get(section, {}), named=section in ("data", "budget"))
    per_mech = _check_mechanisms(path, raw.get("mechanisms", {}))
    overrides = _check_overrides(path, raw.get("overrides", {}))
    factors = _check_grid(path, raw, dict(raw.get("grid", {})))
    combos = _expand(path, factors, mode)

    knob_factors = [k for k, _ in factors if k.startswith("knobs.")]
    cells: dict[str, Cell] = {}
    for combo in combos:
        with _cell_context(path, combo):
            spec = _resolve_cell(path, raw, combo, per_mech, overrides, knob_factors, allow_long)
        cell = Cell(spec)
        cells.setdefault(cell.cell_id, cell)
    return Suite(
        name,
        str(path),
        description,
        "",
        tuple(cells.values()),
        raw,
        executor,
        tuple(k for k, _ in factors),
    )


EXECUTOR_KEYS = {
    "jobs": "cells at once (a positive integer)",
    "cpus": "CPUs each cell asks of a Ray node (a number > 0; above 1 a whole number)",
    "gpus": "GPUs each cell asks of a Ray node (a number >= 0; above 1 a whole number)",
    "max_retries": "Ray re-runs of a cell whose worker was lost (an integer >= 0)",
}


def _check_executor(path: Path, table: Any) -> dict[str, Any]:
    """``[suite] executor = { jobs = 2, cpus = 4, gpus = 1 }``: defaults for the executor (the command line
    wins). ``cpus``/``gpus`` are each cell's resource request on a Ray cluster (``--executor ray``); the
    local executor runs ``jobs`` cells at once and ignores them."""
    key = "suite.executor"
    if not isinstance(table, dict):
        raise SuiteError(path, key, f"must be a table (e.g. {{ jobs = 2 }}), got {show(table)}")
    check_plain(path, key, table)
    for name, value in table.items():
        if name not in EXECUTOR_KEYS:
            raise SuiteError(path, f"{key}.{name}", f"unknown key; allowed: {', '.join(EXECUTOR_KEYS)}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        integer = number and isinstance(value, int)
        if name in ("cpus", "gpus"):
            low_ok = number and (value > 0 if name == "cpus" else value >= 0)
            ok = low_ok and (value <= 1 or float(value).is_integer())  # Ray's rule for resource quantities
        else:
            ok = integer and (value >= 1 if name == "jobs" else value >= 0)
        if not ok:
            raise SuiteError(path, f"{key}.{name}", f"got {show(value)}; allowed: {EXECUTOR_KEYS[name]}")
    return dict(table)


def _check_plugins(path: Path, declared: Any, loaded: tuple[str | Path, ...]) -> None:
    """``[suite] plugins`` declares plugin files; they run only when the user passed them with --plugin."""
    if not isinstance(declared, list) or not all(isinstance(p, str) and p for p in declared):
        raise SuiteError(path, "suite.plugins", f"must be a list of .py file names, got {show(declared)}")
    given = set()
    for item in loaded:
        with contextlib.suppress(OSError, RuntimeError):
            given.add(Path(item).resolve())
    for plugin in declared:
        target = path.parent / plugin
        try:
            resolved = target.resolve()
        except (OSError, RuntimeError, ValueError):
            resolved = None
        if resolved not in given:
            raise SuiteError(
                path,
                "suite.plugins",
                f"needs the plugin file {plugin!r}; suite files never run code: load it explicitly with "
                f"`attn-zoo run {path} --plugin {target}` (or install it as a package with an "
                "attn_zoo.mechanisms entry point)",
            )


def _check_mechanisms(path: Path, per_mech: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``[mechanisms.NAME]`` tables: known mechanism, known knobs, values of the knob's type."""
    out = {}
    for mech, knobs in per_mech.items():
        _check_mechanism(path, f"mechanisms.{mech}", mech)
        if not isinstance(knobs, dict):
            raise SuiteError(path, f"mechanisms.{mech}", f"must be a table of knobs, got {show(knobs)}")
        spec = get_mechanism(mech)
        parsed = {}
        for knob, value in knobs.items():
            key = f"mechanisms.{mech}.{knob}"
            if knob not in spec.knobs:
                raise SuiteError(path, key, f"unknown knob; {mech} has: {', '.join(spec.knobs) or '(none)'}")
            parsed[knob] = _check_knob(path, key, mech, knob, value)
        try:  # constraints between knobs (and with the paper's per-stage defaults) of this table
            spec.validate(parsed)
        except AttnZooError as exc:
            raise SuiteError(path, f"mechanisms.{mech}", str(exc)) from None
        out[mech] = parsed
    return out


def _check_knob(path: Path, key: str, mech: str, knob: str, value: Any) -> Any:
    check_plain(path, key, value)
    try:
        parsed = parse_knob_value(value)
        spec = get_mechanism(mech).knobs[knob]
        for item in parsed.values if isinstance(parsed, PerStage) else (parsed,):
            spec.validate(item, f"mechanism {mech!r}")
    except AttnZooError as exc:
        raise SuiteError(path, key, str(exc)) from None
    return parsed


def _check_overrides(path: Path, overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``[overrides.NAME.SECTION]``: NAME a mechanism or preset, SECTION one of the config sections."""
    names = [*list_mechanisms(), *list_presets()]
    for name, sections in overrides.items():
        if name not in names:
            raise SuiteError(
                path, f"overrides.{name}", f"unknown mechanism or preset {name!r}; allowed: {', '.join(names)}"
            )
        if not isinstance(sections, dict):
            raise SuiteError(path, f"overrides.{name}", f"must hold section tables, got {show(sections)}")
        for section, table in sections.items():
            key = f"overrides.{name}.{section}"
            if section not in CONFIG_SECTIONS:
                raise SuiteError(path, key, f"unknown section; allowed: {', '.join(CONFIG_SECTIONS)}")
            if not isinstance(table, dict):
                raise SuiteError(path, key, f"must be a table, got {show(table)}")
            if section == "model" and "mechanism" in table:
                raise SuiteError(path, f"{key}.mechanism", "name mechanisms in [grid] or [model], not in overrides")
            check_table(path, key, section, table)
    return {name: dict(sections) for name, sections in overrides.items()}


def _check_grid(path: Path, raw: Mapping[str, Any], grid: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    factors: list[tuple[str, list[Any]]] = []
    mechanisms = _suite_mechanisms(raw)
    for key, values in grid.items():
        gkey = f"grid.{key}"
        if not isinstance(values, list):
            raise SuiteError(path, gkey, f"must be a list of values, got {show(values)}")
        if not values:
            raise SuiteError(path, gkey, "is empty; a factor needs at least one value")
        head, _, rest = key.partition(".")
        if key == "mechanism":
            for value in values:
                _check_mechanism(path, gkey, value)
        elif key == "preset":
            for value in values:
                if not isinstance(value, str) or value not in list_presets():
                    raise SuiteError(path, gkey, f"unknown preset {show(value)}; allowed: {', '.join(list_presets())}")
        elif key == "seed":
            for value in values:
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                    raise SuiteError(path, gkey, f"seeds must be non-negative integers, got {show(value)}")
        elif key in CONFIG_SECTIONS:  # a whole section as a factor: datasets, budgets, ...
            for value in values:
                if not isinstance(value, dict):
                    raise SuiteError(path, gkey, f"values must be tables of [{key}] keys, got {show(value)}")
                check_table(path, gkey, key, value, named=True)
        elif head == "knobs" and rest and "." not in rest:
            owners = [m for m in mechanisms if rest in get_mechanism(m).knobs]
            if not owners:
                names = ", ".join(mechanisms) or "(none named)"
                raise SuiteError(path, gkey, f"no mechanism of this suite ({names}) has knob {rest!r}")
            for value in values:
                for mech in owners:
                    _check_knob(path, gkey, mech, rest, value)
        elif head in CONFIG_SECTIONS and rest and "." not in rest:
            fields = section_fields(head)
            if rest not in fields and head != "data":
                raise SuiteError(path, gkey, f"unknown key in [{head}]; allowed: {', '.join(sorted(fields))}")
            for value in values:
                if rest in fields:
                    check_value(path, gkey, value, fields[rest])
                else:
                    check_plain(path, gkey, value)
                if rest.endswith("_dir") and head != "data":
                    check_output_dir(path, gkey, value)
        else:
            allowed = "mechanism, seed, preset, a section (" + ", ".join(CONFIG_SECTIONS) + ")"
            allowed += ", or section.field / knobs.NAME"
            raise SuiteError(path, gkey, f"unknown factor; allowed: {allowed}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise SuiteError(path, gkey, f"lists a value twice: {show(values)}")
        factors.append((key, values))
    return factors


def _expand(path: Path, factors: list[tuple[str, list[Any]]], mode: str) -> list[dict[str, Any]]:
    """Factor combinations (dicts), checked against MAX_CELLS before anything is built."""
    seeds = [(k, v) for k, v in factors if k == "seed"]
    others = [(k, v) for k, v in factors if k != "seed"]
    if mode == "zip":
        lengths = {k: len(v) for k, v in others}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise SuiteError(path, "grid", f"mode 'zip' needs factors of equal length, got {detail}")
        size = (next(iter(lengths.values())) if lengths else 1) * (len(seeds[0][1]) if seeds else 1)
    else:
        size = math.prod(len(v) for _, v in factors)
    if size > MAX_CELLS:
        raise SuiteError(path, "grid", f"expands to {size} cells; at most {MAX_CELLS} allowed (split the suite)")
    keys = [k for k, _ in others]
    if mode == "zip":
        base = [dict(zip(keys, vals)) for vals in zip(*[v for _, v in others])] if others else [{}]
    else:
        base = [dict(zip(keys, vals)) for vals in itertools.product(*[v for _, v in others])]
    if not seeds:
        return base
    return [{**combo, "seed": seed} for combo in base for seed in seeds[0][1]]


@contextlib.contextmanager
def _cell_context(path: Path, combo: Mapping[str, Any]) -> Iterator[None]:
    """Errors that depend on a combination say which cell; anything unexpected still gets one line."""
    where = f" (in the cell {variant_name(combo) or 'with no factors'}" + (
        f", mechanism={combo['mechanism']})" if "mechanism" in combo else ")"
    )
    try:
        yield
    except SuiteError as exc:
        if not combo:
            raise
        raise SuiteError(exc.path, exc.key, exc.message + where) from None
    except (AttnZooError, TypeError, ValueError, ArithmeticError, KeyError) as exc:
        raise SuiteError(path, "", f"cannot build a cell: {type(exc).__name__}: {exc}{where}") from None


def _check_mechanism(path: Path, key: str, name: Any) -> None:
    if not isinstance(name, str) or name not in list_mechanisms():
        raise SuiteError(path, key, f"unknown mechanism {show(name)}; allowed: {', '.join(list_mechanisms())}")


def _resolve_cell(
    path: Path,
    raw: Mapping[str, Any],
    combo: Mapping[str, Any],
    per_mech: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Mapping[str, Any]],
    knob_factors: list[str],
    allow_long: bool = False,
) -> dict[str, Any]:
    sections = {s: copy.deepcopy(dict(raw.get(s, {}))) for s in CONFIG_SECTIONS}
    for s in ("data", "budget"):
        sections[s].pop("name", None)
    preset = combo.get("preset", combo.get("model.preset", sections["model"].get("preset")))
    mechanism = combo.get("mechanism", combo.get("model.mechanism", sections["model"].get("mechanism")))
    if mechanism is not None:
        _check_mechanism(path, "model.mechanism", mechanism)
    label = mechanism or preset
    if label is None:
        raise SuiteError(
            path,
            "grid.mechanism",
            "name at least one mechanism (grid.mechanism or model.mechanism) or a preset (model.preset)",
        )
    # per-mechanism (or per-preset) overrides sit between the section defaults and the grid factors
    for name in dict.fromkeys([preset, mechanism]):
        for section, table in (overrides.get(name) or {}).items():
            _merge(sections[section], table)
    knobs: dict[str, Any] = dict(per_mech.get(mechanism, {})) if mechanism else {}
    factors: dict[str, Any] = {}
    for key, value in combo.items():
        head, _, rest = key.partition(".")
        if key in ("mechanism", "seed"):
            factors[key] = value
        elif key == "preset":
            sections["model"]["preset"] = value
            factors[key] = value
        elif head == "knobs":
            if mechanism and rest in get_mechanism(mechanism).knobs:
                knobs[rest] = parse_knob_value(value)
                factors[key] = value
        elif key in CONFIG_SECTIONS:
            table = {k: v for k, v in value.items() if k != "name"}
            _merge(sections[key], copy.deepcopy(table))
            factors[key] = value
        else:
            sections[head][rest] = copy.deepcopy(value)
            factors[key] = value

    model_table = sections["model"]
    model_table.pop("mechanism", None)
    preset = model_table.get("preset")
    if preset is not None and preset not in list_presets():
        raise SuiteError(path, "model.preset", f"unknown preset {show(preset)}; allowed: {', '.join(list_presets())}")
    seed = combo.get("seed", sections["train"].pop("seed", 0))
    sections["train"].pop("seed", None)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SuiteError(path, "train.seed", f"seeds must be non-negative integers, got {show(seed)}")

    with _section(path, "model"):
        config = resolve_config(model_table)
        if mechanism is not None:
            config = config.replace(mixer=MixerSpec(mechanism, knobs))
        config.validate()
    for key in DATA_PATH_KEYS:
        if isinstance(sections["data"].get(key), str) and sections["data"][key]:
            sections["data"][key] = data_path(path, f"data.{key}", sections["data"][key])
    with _section(path, "data"):
        data = DataConfig.from_dict(sections["data"]) if sections["data"] else None
    with _section(path, "train"):
        train = TrainConfig.from_dict(sections["train"]) if raw.get("train") is not None else None
    with _section(path, "budget"):
        budget = Budget(**sections["budget"]) if sections["budget"] else Budget()
    with _section(path, "measure"):
        measure = resolve_measure(sections["measure"])
    with _section(path, "model.backend"):
        _check_backend_here(config, measure["device"])
    if train is not None and data is None:
        raise SuiteError(path, "data", 'training needs a [data] section (e.g. source = "synthetic")')
    if train is not None and not allow_long:
        check_duration(path, train, data, measure["device"])
    return {
        "label": label,
        "mechanism": mechanism or "+".join(config.mechanisms()),
        "preset": preset,
        "knobs": MixerSpec(label, knobs).to_dict()["knobs"],
        "model": config.to_dict(),
        "data": data.to_dict() if data else None,
        "train": train.to_dict() if train else None,  # "compile" left out while "auto": ids unchanged
        "budget": dataclasses.asdict(budget),
        "measure": measure,
        "seed": seed,
        "factors": factors,
    }


def _check_backend_here(config: ModelConfig, device: str) -> None:
    """A forced backend must be usable on the cell's device, checked before any cell runs; a CUDA device this
    machine lacks is left to the machine that runs the cell (a cluster's workers)."""
    import torch

    if device == "cpu" or torch.cuda.is_available():
        config.check_backend_runs(device)


def _suite_mechanisms(raw: Mapping[str, Any]) -> list[str]:
    """The mechanism names of the suite that exist; anything else (tables, lists, numbers) is left to the
    checks that name it."""
    grid, model = raw.get("grid", {}), raw.get("model", {})
    names = grid.get("mechanism", []) if isinstance(grid, Mapping) else []
    names = names if isinstance(names, list) else []
    single = model.get("mechanism") if isinstance(model, Mapping) else None
    strings = [n for n in [*names, single] if isinstance(n, str)]
    return [n for n in dict.fromkeys(strings) if n in list_mechanisms()]


@contextlib.contextmanager
def _section(path: Path, section: str) -> Iterator[None]:
    """Turn a config error inside ``section`` into a SuiteError naming the file and the section."""
    try:
        yield
    except AttnZooError as exc:
        raise SuiteError(path, section, str(exc)) from None
    except (TypeError, ValueError, ArithmeticError, KeyError) as exc:
        raise SuiteError(path, section, f"invalid values: {type(exc).__name__}: {exc}") from None
