"""The cell spec: everything one cell of a suite (or one ``attn-zoo bench`` row) is, typed and frozen.

A :class:`CellSpec` has a section per config (``model``: :class:`~attn_zoo.backbone.config.ModelConfig`,
``data``: :class:`~attn_zoo.data.config.DataConfig`, ``train``: :class:`~attn_zoo.train.recipe.TrainConfig`,
``budget``: :class:`~attn_zoo.budget.BudgetConfig`, ``measure``:
:class:`~attn_zoo.measure.profile.MeasureConfig`) and the cell's names (``label``, ``mechanism``,
``preset``, ``knobs``, ``seed``; ``factors`` for a suite's cell, ``bench_run`` for a bench row).

:func:`build_cell_spec` is the one builder (``grid.suite`` and ``cli.bench_cmd`` call it): it checks every
section once and raises :class:`SpecError` naming the section. :meth:`CellSpec.to_dict` is the one plain
form: what the store keeps, what a worker process reads, and what the cell ids hash
(:func:`cell_hash`, :func:`config_hash`). :meth:`CellSpec.from_dict` reads it back, also from older stores
(missing keys take their defaults); it re-checks nothing, since the spec was checked when it was built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import attn_zoo
from attn_zoo.backbone.config import MixerSpec, ModelConfig
from attn_zoo.backbone.presets import resolve_config
from attn_zoo.budget import BudgetConfig
from attn_zoo.data.config import DataConfig
from attn_zoo.errors import AttnZooError, ConfigError
from attn_zoo.measure.profile import MeasureConfig
from attn_zoo.train.recipe import TrainConfig

# the frame columns (Store.frame) that come from a stored spec, besides ``knob.<name>``
SPEC_COLUMNS = ("img_size", "dims", "depths", "data")


class SpecError(ConfigError):
    """A cell spec that cannot be built: ``section`` (``model``, ``data``, ``train.seed``, ...) and the
    one-line ``message``; ``str()`` is the message."""

    def __init__(self, section: str, message: str):
        self.section, self.message = section, message
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """One cell, resolved: see the module docstring. ``factors`` (the grid values that made a suite's cell)
    is not part of the cell's identity."""

    label: str
    mechanism: str
    preset: str | None
    knobs: Mapping[str, Any]
    model: ModelConfig
    measure: MeasureConfig
    data: DataConfig | None = None
    train: TrainConfig | None = None
    budget: BudgetConfig | None = None
    seed: int = 0
    factors: Mapping[str, Any] | None = None
    bench_run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The plain (JSON) form; ``factors`` and ``bench_run`` only when set."""
        out: dict[str, Any] = {
            "label": self.label,
            "mechanism": self.mechanism,
            "preset": self.preset,
            "knobs": dict(self.knobs),
            "model": self.model.to_dict(),
            "data": self.data.to_dict() if self.data is not None else None,
            "train": self.train.to_dict() if self.train is not None else None,
            "budget": dataclasses.asdict(self.budget) if self.budget is not None else None,
            "measure": self.measure.to_dict(),
            "seed": self.seed,
        }
        if self.factors is not None:
            out["factors"] = dict(self.factors)
        if self.bench_run is not None:
            out["bench_run"] = self.bench_run
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellSpec:
        """Read back :meth:`to_dict`'s form (a stored row's spec, a worker's spec file)."""
        model = ModelConfig.from_dict(data.get("model") or {})
        return cls(
            label=str(data.get("label") or data.get("mechanism") or data.get("preset") or ""),
            mechanism=str(data.get("mechanism") or "+".join(model.mechanisms())),
            preset=data.get("preset"),
            knobs=dict(data.get("knobs") or {}),
            model=model,
            measure=MeasureConfig(**_known(MeasureConfig, data.get("measure") or {})),
            data=_data_config(data["data"]) if data.get("data") else None,
            train=_train_config(data["train"]) if data.get("train") is not None else None,
            budget=BudgetConfig(**_known(BudgetConfig, data["budget"])) if data.get("budget") is not None else None,
            seed=int(data.get("seed") or 0),
            factors=dict(data["factors"]) if data.get("factors") is not None else None,
            bench_run=data.get("bench_run"),
        )

    @classmethod
    def coerce(cls, value: CellSpec | Mapping[str, Any]) -> CellSpec:
        return value if isinstance(value, CellSpec) else cls.from_dict(value)

    def replace(self, **changes: Any) -> CellSpec:
        return dataclasses.replace(self, **changes)

    @property
    def cell_id(self) -> str:
        return cell_hash(self)

    @property
    def config_id(self) -> str:
        return config_hash(self)


def _known(cls: type, table: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in table.items() if k in names}


def _data_config(table: Mapping[str, Any]) -> DataConfig:
    names = {f.name for f in dataclasses.fields(DataConfig)} - {"options"}
    known = {k: v for k, v in table.items() if k in names}
    options = {k: v for k, v in table.items() if k not in names and k != "options"}
    options.update(table.get("options") or {})
    return DataConfig(**known, options=options)


def _train_config(table: Mapping[str, Any]) -> TrainConfig:
    kwargs = _known(TrainConfig, table)
    if isinstance(kwargs.get("eval_resolutions"), list):
        kwargs["eval_resolutions"] = tuple(kwargs["eval_resolutions"])
    return TrainConfig(**kwargs)


def plain_spec(spec: CellSpec | Mapping[str, Any]) -> dict[str, Any]:
    """The plain form of a spec: :meth:`CellSpec.to_dict`, or a plain dict as it was given (ids, checkpoints)."""
    return spec.to_dict() if isinstance(spec, CellSpec) else dict(spec)


def cell_hash(spec: CellSpec | Mapping[str, Any]) -> str:
    """Hash of the resolved configuration and the code version: a changed cell is a new cell."""
    core = {k: v for k, v in plain_spec(spec).items() if k != "factors"}
    payload = json.dumps({"spec": core, "code": attn_zoo.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def config_hash(spec: CellSpec | Mapping[str, Any]) -> str:
    """Hash of the resolved configuration without the seed: the key that seeds are aggregated over."""
    core = {k: v for k, v in plain_spec(spec).items() if k not in ("factors", "seed")}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


def spec_columns(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The :data:`SPEC_COLUMNS` of a stored spec (a plain dict, possibly partial or malformed)."""
    spec = spec if isinstance(spec, Mapping) else {}
    model = spec.get("model") if isinstance(spec.get("model"), Mapping) else {}
    data = spec.get("data") if isinstance(spec.get("data"), Mapping) else {}
    return {
        "img_size": model.get("img_size"),
        "dims": json.dumps(model.get("dims")),
        "depths": json.dumps(model.get("depths")),
        "data": data.get("source"),
    }


@contextlib.contextmanager
def _section(section: str) -> Iterator[None]:
    """A config error inside ``section`` becomes a :class:`SpecError` naming it."""
    try:
        yield
    except SpecError:
        raise
    except AttnZooError as exc:
        raise SpecError(section, str(exc)) from None
    except (TypeError, ValueError, ArithmeticError, KeyError) as exc:
        raise SpecError(section, f"invalid values: {type(exc).__name__}: {exc}") from None


def build_cell_spec(
    model: ModelConfig | Mapping[str, Any],
    *,
    label: str,
    mixer: str | None = None,
    knobs: Mapping[str, Any] | None = None,
    preset: str | None = None,
    data: DataConfig | Mapping[str, Any] | None = None,
    train: TrainConfig | Mapping[str, Any] | None = None,
    budget: BudgetConfig | Mapping[str, Any] | None = None,
    measure: MeasureConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    factors: Mapping[str, Any] | None = None,
    bench_run: str | None = None,
) -> CellSpec:
    """Build and check one cell spec; raises :class:`SpecError` (section, one-line message).

    ``model``: a config, or a ``[model]`` table (``preset`` as its base). ``mixer``: the mechanism every
    block uses, with ``knobs`` (else the model's own mixers; ``knobs`` are then only recorded). ``data`` /
    ``train``: ``None`` (or an empty data table) for a cell that does not train; ``budget``: ``None`` for no
    budget at all (bench), a table (empty: the defaults) otherwise.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SpecError("train.seed", f"seeds must be non-negative integers, got {seed!r} ({type(seed).__name__})")
    knobs = dict(knobs or {})
    with _section("model"):
        config = model if isinstance(model, ModelConfig) else resolve_config(model)
        if mixer is not None:
            config = config.replace(mixer=MixerSpec(mixer, knobs))
        config.validate()
    with _section("data"):
        data_config = None if not data else data if isinstance(data, DataConfig) else DataConfig.from_dict(data)
    with _section("train"):
        train_config = train if isinstance(train, TrainConfig) or train is None else TrainConfig.from_dict(train)
        if train_config is not None:
            train_config.validate()
    with _section("budget"):
        budget_config = budget if isinstance(budget, BudgetConfig) or budget is None else BudgetConfig(**budget)
    with _section("measure"):
        measure_config = MeasureConfig.coerce(measure)
    with _section("model.backend"):
        _check_backend_here(config, measure_config.device)
    if train_config is not None and data_config is None:
        raise SpecError("data", 'training needs a [data] section (e.g. source = "synthetic")')
    return CellSpec(
        label=label,
        mechanism=mixer or "+".join(config.mechanisms()),
        preset=preset,
        knobs=MixerSpec(label, knobs).to_dict()["knobs"],
        model=config,
        measure=measure_config,
        data=data_config,
        train=train_config,
        budget=budget_config,
        seed=seed,
        factors=dict(factors) if factors is not None else None,
        bench_run=bench_run,
    )


def _check_backend_here(config: ModelConfig, device: str) -> None:
    """A forced backend must be usable on the cell's device, checked before any cell runs; a CUDA device this
    machine lacks is left to the machine that runs the cell (a cluster's workers)."""
    import torch

    if device == "cpu" or torch.cuda.is_available():
        config.check_backend_runs(device)


__all__ = [
    "SPEC_COLUMNS",
    "CellSpec",
    "SpecError",
    "build_cell_spec",
    "cell_hash",
    "config_hash",
    "plain_spec",
    "spec_columns",
]
