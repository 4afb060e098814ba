"""Suite files (TOML) -> validated cells, before any compute.

A suite names a base model, the data, the training recipe, the budget and what to measure, then a grid of
factors combined as a cartesian product (or zipped). Example::

    [suite]
    name = "quick"
    mode = "product"            # or "zip"
    include = ["base.toml"]     # optional; this file's values win

    [model]
    preset = "zoo_s32"          # any ModelConfig field may follow

    [data]
    source = "pathfinder"

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
    "model.img_size" = [32, 64] # any dotted key into model/data/train/budget/measure

    [mechanisms.swin]           # per-mechanism knobs
    window = 4

Nothing in a suite file is evaluated as code; every key is checked against what exists and every error
names the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attn_zoo
from attn_zoo.backbone.config import MixerSpec, ModelConfig, parse_knob_value
from attn_zoo.backbone.presets import list_presets, resolve_config
from attn_zoo.errors import AttnZooError
from attn_zoo.measure.profile import MEASURE_DEFAULTS, resolve_measure  # noqa: F401 (re-exported)
from attn_zoo.registry import get_mechanism, list_mechanisms, load_plugin_file
from attn_zoo.train.budget import Budget
from attn_zoo.train.data import DataConfig
from attn_zoo.train.recipe import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = ("suite", "model", "data", "train", "budget", "measure", "grid", "mechanisms")
SUITE_KEYS = ("name", "description", "mode", "include", "plugins", "executor")
GRID_TARGETS = ("model", "data", "train", "budget", "measure", "knobs")
MAX_CELLS = 100_000


class SuiteError(AttnZooError, ValueError):
    """A suite file that cannot run: names the file, the key, the value and what is allowed."""

    def __init__(self, path: str | Path, key: str, message: str):
        self.path, self.key = str(path), key
        super().__init__(f"{path}: [{key}] {message}" if key else f"{path}: {message}")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid, fully resolved: what runs in one worker process and one result row."""

    spec: Mapping[str, Any]

    @property
    def cell_id(self) -> str:
        return cell_hash(self.spec)

    @property
    def label(self) -> str:
        return self.spec["label"]

    @property
    def mechanism(self) -> str:
        return self.spec["mechanism"]

    @property
    def seed(self) -> int:
        return self.spec["seed"]

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


def cell_hash(spec: Mapping[str, Any]) -> str:
    """Hash of the resolved configuration and the code version: a changed cell is a new cell."""
    payload = json.dumps({"spec": spec, "code": attn_zoo.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_suite(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Suite:
    """Read, merge includes, validate and expand a suite file. Raises :class:`SuiteError`."""
    path = Path(path)
    raw = _read(path, seen=())
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return _build(path, raw)


def _read(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise SuiteError(path, "", "file not found" if not path.exists() else "not a regular file")
    if path.resolve() in seen:
        raise SuiteError(path, "suite.include", "includes itself (include cycle)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(path, "", f"is not valid TOML: {exc}") from None
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise SuiteError(path, sorted(unknown)[0], f"unknown section; allowed: {', '.join(SECTIONS)}")
    for section, value in data.items():
        if not isinstance(value, dict):
            raise SuiteError(path, section, f"must be a table, got {type(value).__name__} {value!r}")
    includes = data.get("suite", {}).get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SuiteError(path, "suite.include", f"must be a list of file names, got {includes!r}")
    merged: dict[str, Any] = {}
    for include in includes:
        _merge(merged, _read((path.parent / include), seen + (path.resolve(),)))
    merged.get("suite", {}).pop("name", None)  # the including file names the suite
    _merge(merged, data)
    return merged


def _merge(base: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _build(path: Path, raw: Mapping[str, Any]) -> Suite:
    suite_table = dict(raw.get("suite", {}))
    unknown = set(suite_table) - set(SUITE_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise SuiteError(path, f"suite.{key}", f"unknown key; allowed: {', '.join(SUITE_KEYS)}")
    plugins = suite_table.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise SuiteError(path, "suite.plugins", f"must be a list of .py file paths, got {plugins!r}")
    for plugin in plugins:
        try:
            load_plugin_file(path.parent / plugin)
        except AttnZooError as exc:
            raise SuiteError(path, "suite.plugins", str(exc)) from None
    name = suite_table.get("name", path.stem)
    if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
        raise SuiteError(path, "suite.name", f"{name!r} must be a simple name (letters, digits, _ and -)")
    mode = suite_table.get("mode", "product")
    if mode not in ("product", "zip"):
        raise SuiteError(path, "suite.mode", f"{mode!r} unknown; allowed: product, zip")

    grid = dict(raw.get("grid", {}))
    factors: list[tuple[str, list[Any]]] = []
    for key, values in grid.items():
        if not isinstance(values, list):
            raise SuiteError(path, f"grid.{key}", f"must be a list of values, got {values!r}")
        if not values:
            raise SuiteError(path, f"grid.{key}", "is empty; a factor needs at least one value")
        if key not in ("mechanism", "seed", "preset") and key.split(".")[0] not in GRID_TARGETS:
            allowed = "mechanism, seed, preset, or a dotted key starting with " + ", ".join(GRID_TARGETS)
            raise SuiteError(path, f"grid.{key}", f"unknown factor; allowed: {allowed}")
        factors.append((key, values))
    if mode == "zip":
        lengths = {len(v) for _, v in factors}
        if len(lengths) > 1:
            raise SuiteError(path, "grid", f"mode 'zip' needs factors of equal length, got {sorted(lengths)}")
        combos = [dict(zip([k for k, _ in factors], vals)) for vals in zip(*[v for _, v in factors])]
    else:
        size = 1
        for _, values in factors:
            size *= len(values)
        if size > MAX_CELLS:
            raise SuiteError(path, "grid", f"expands to {size} cells; at most {MAX_CELLS} allowed")
        combos = [dict(zip([k for k, _ in factors], vals)) for vals in itertools.product(*[v for _, v in factors])]

    per_mech = raw.get("mechanisms", {})
    for mech, knobs in per_mech.items():
        _check_mechanism(path, f"mechanisms.{mech}", mech)
        if not isinstance(knobs, dict):
            raise SuiteError(path, f"mechanisms.{mech}", f"must be a table of knobs, got {knobs!r}")

    knob_factors = [k for k in grid if k.startswith("knobs.")]
    cells: dict[str, Cell] = {}
    for combo in combos or [{}]:
        spec = _resolve_cell(path, raw, combo, per_mech, knob_factors)
        cell = Cell(spec)
        cells.setdefault(cell.cell_id, cell)
    executor = raw.get("suite", {}).get("executor", {})
    if not isinstance(executor, dict):
        raise SuiteError(path, "suite.executor", f"must be a table (e.g. {{ cpus = 2 }}), got {executor!r}")
    return Suite(
        name,
        str(path),
        str(suite_table.get("description", "")),
        path.read_text(encoding="utf-8"),
        tuple(cells.values()),
        raw,
        executor,
    )


def _check_mechanism(path: Path, key: str, name: Any) -> None:
    if not isinstance(name, str) or name not in list_mechanisms():
        raise SuiteError(path, key, f"unknown mechanism {name!r}; allowed: {', '.join(list_mechanisms())}")


def _resolve_cell(
    path: Path,
    raw: Mapping[str, Any],
    combo: Mapping[str, Any],
    per_mech: Mapping[str, Any],
    knob_factors: list[str],
) -> dict[str, Any]:
    sections = {s: copy.deepcopy(dict(raw.get(s, {}))) for s in ("model", "data", "train", "budget", "measure")}
    knobs_override: dict[str, Any] = {}
    for key, value in combo.items():
        head, _, rest = key.partition(".")
        if key in ("mechanism", "seed"):
            continue
        if key == "preset":
            sections["model"]["preset"] = value
        elif head == "knobs":
            knobs_override[rest] = value
        else:
            _set_dotted(sections[head], rest, value)

    model_table = sections["model"]
    preset = model_table.get("preset")
    if preset is not None and preset not in list_presets():
        raise SuiteError(path, "model.preset", f"unknown preset {preset!r}; allowed: {', '.join(list_presets())}")
    mechanism = combo.get("mechanism", model_table.pop("mechanism", None))
    seed = combo.get("seed", raw.get("train", {}).get("seed", 0))
    sections["train"].pop("seed", None)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SuiteError(path, "grid.seed", f"seeds must be non-negative integers, got {seed!r}")
    label = mechanism or preset
    if label is None:
        raise SuiteError(
            path,
            "grid.mechanism",
            "name at least one mechanism (grid.mechanism or model.mechanism) or a preset (model.preset)",
        )
    knobs: dict[str, Any] = {}
    if mechanism is not None:
        _check_mechanism(path, "grid.mechanism", mechanism)
        mech = get_mechanism(mechanism)
        knobs = {k: parse_knob_value(v) for k, v in dict(per_mech.get(mechanism, {})).items()}
        for knob in knob_factors:
            name = knob.partition(".")[2]
            if not any(name in get_mechanism(m).knobs for m in _suite_mechanisms(raw)):
                raise SuiteError(path, f"grid.{knob}", f"no mechanism of this suite has knob {name!r}")
        knobs.update({k: parse_knob_value(v) for k, v in knobs_override.items() if k in mech.knobs})
        for key in knobs:
            if key not in mech.knobs:
                raise SuiteError(
                    path,
                    f"mechanisms.{mechanism}.{key}",
                    f"unknown knob; {mechanism} has: {', '.join(mech.knobs) or '(none)'}",
                )

    with _section(path, "model"):
        config = resolve_config(model_table)
        if mechanism is not None:
            config = config.replace(mixer=MixerSpec(mechanism, knobs))
        config.validate()
    with _section(path, "data"):
        data = DataConfig.from_dict(sections["data"]) if sections["data"] else None
    with _section(path, "train"):
        train = TrainConfig.from_dict(sections["train"]) if raw.get("train") is not None else None
    with _section(path, "budget"):
        budget = Budget(**sections["budget"]) if sections["budget"] else Budget()
    with _section(path, "measure"):
        measure = resolve_measure(sections["measure"])
    if train is not None and data is None:
        raise SuiteError(path, "data", 'training needs a [data] section (e.g. source = "synthetic")')
    return {
        "label": label,
        "mechanism": mechanism or "+".join(config.mechanisms()),
        "preset": preset,
        "knobs": MixerSpec(label, knobs).to_dict()["knobs"],
        "model": config.to_dict(),
        "data": data.to_dict() if data else None,
        "train": dataclasses.asdict(train) if train else None,
        "budget": dataclasses.asdict(budget),
        "measure": measure,
        "seed": seed,
    }


def _suite_mechanisms(raw: Mapping[str, Any]) -> list[str]:
    names = raw.get("grid", {}).get("mechanism", [])
    single = raw.get("model", {}).get("mechanism")
    return [n for n in [*names, single] if isinstance(n, str) and n in list_mechanisms()]


@contextlib.contextmanager
def _section(path: Path, section: str) -> Iterator[None]:
    """Turn a config error inside ``section`` into a SuiteError naming the file and the section."""
    try:
        yield
    except TypeError as exc:  # an unknown keyword into a config dataclass
        raise SuiteError(path, section, f"unknown key: {exc}") from None
    except AttnZooError as exc:
        raise SuiteError(path, section, str(exc)) from None
