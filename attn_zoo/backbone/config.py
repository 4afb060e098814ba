"""The harness configuration: everything about a model except the mixer is here and shared.

A :class:`ModelConfig` is plain data (JSON/TOML friendly), validated once by :meth:`ModelConfig.validate`
before anything is built. The per-stage mixer schedule says which mechanism each block uses:

- ``mixer="swin"``: one mechanism everywhere (its own block pattern applies: W-MSA / SW-MSA);
- ``mixer=[["iwsa", "ssa"]] * 4``: a pattern cycled over the blocks of each stage;
- ``mixer=["msda", "msda", "global", "global"]``: different mechanisms per stage.

Knobs go with the mechanism (``MixerSpec("swin", {"window": 4})``); a knob value can be per stage
(``PerStage((8, 4, 2, 1))``, in TOML ``{ per_stage = [8, 4, 2, 1] }``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from attn_zoo.errors import AttnZooError, BackendUnavailableError, ConfigError, UnknownNameError
from attn_zoo.layers.downsample import DOWNSAMPLERS
from attn_zoo.layers.heads import HEADS
from attn_zoo.layers.stems import STEMS
from attn_zoo.registry import PerStage, get_mechanism

POS_ENCODINGS = ("none", "peg", "cpe")


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    """One mechanism with its knobs."""

    name: str
    knobs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        knobs = {
            k: ({"per_stage": list(v.values)} if isinstance(v, PerStage) else _plain(v)) for k, v in self.knobs.items()
        }
        return {"name": self.name, "knobs": knobs}


MixerLike = str | MixerSpec | Mapping[str, Any]


def as_mixer_spec(value: MixerLike) -> MixerSpec:
    """``"swin"``, ``{"name": "swin", "knobs": {...}}`` or a MixerSpec -> MixerSpec (per-stage knobs parsed)."""
    if isinstance(value, MixerSpec):
        return value
    if isinstance(value, str):
        return MixerSpec(value)
    if isinstance(value, Mapping) and "name" in value:
        extra = set(value) - {"name", "knobs"}
        if extra:
            raise ConfigError(f"mixer {value!r}: unknown keys {sorted(extra)}; allowed: name, knobs")
        knobs = {k: parse_knob_value(v) for k, v in dict(value.get("knobs") or {}).items()}
        return MixerSpec(value["name"], knobs)
    raise ConfigError(f"mixer {value!r}: expected a mechanism name or {{name = ..., knobs = {{...}}}}")


def parse_knob_value(value: Any) -> Any:
    """``{"per_stage": [...]}`` -> PerStage; lists -> tuples; anything else unchanged."""
    if isinstance(value, Mapping):
        if set(value) != {"per_stage"} or not isinstance(value["per_stage"], (list, tuple)) or not value["per_stage"]:
            raise ConfigError(f"knob value {value!r}: a table must be {{ per_stage = [v1, v2, ...] }}")
        return PerStage(tuple(parse_knob_value(v) for v in value["per_stage"]))
    if isinstance(value, list):
        return tuple(parse_knob_value(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A hierarchical backbone: stem, stages of pre-norm blocks with a mixer schedule, norm, pool, head."""

    name: str = "custom"
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    stem: str = "patch"
    stem_hidden: int = 16
    patch_size: int = 4
    dims: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    heads: tuple[int, ...] = (3, 6, 12, 24)
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    downsample: str = "patch_merging"
    pos_encoding: str = "none"
    drop_path_rate: float = 0.1
    drop_rate: float = 0.0
    layer_scale: float | None = None
    head: str = "linear"
    head_hidden: int = 4096
    mixer: Any = "global"
    backend: str = "auto"

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def stage_pattern(self, stage: int) -> tuple[MixerSpec, ...]:
        """The mixer pattern cycled over the blocks of ``stage``."""
        mixer = self.mixer
        if isinstance(mixer, (str, MixerSpec)) or (isinstance(mixer, Mapping) and "name" in mixer):
            return (as_mixer_spec(mixer),)
        if not isinstance(mixer, Sequence) or len(mixer) != self.num_stages:
            raise ConfigError(
                f"model {self.name!r}: mixer must be one mechanism or a list with one entry per stage "
                f"({self.num_stages}), got {mixer!r}"
            )
        entry = mixer[stage]
        if isinstance(entry, (list, tuple)):
            if not entry:
                raise ConfigError(f"model {self.name!r}: stage {stage} has an empty mixer pattern")
            return tuple(as_mixer_spec(e) for e in entry)
        return (as_mixer_spec(entry),)

    def block_mixers(self, stage: int) -> list[tuple[MixerSpec, int]]:
        """``(spec, occurrence)`` per block of ``stage``; occurrence indexes the mechanism's block pattern."""
        pattern = self.stage_pattern(stage)
        return [(pattern[j % len(pattern)], j // len(pattern)) for j in range(self.depths[stage])]

    def mechanisms(self) -> list[str]:
        """Distinct mechanism names used, in order of first use."""
        names: list[str] = []
        for stage in range(self.num_stages):
            for spec in self.stage_pattern(stage):
                if spec.name not in names:
                    names.append(spec.name)
        return names

    def validate(self) -> ModelConfig:
        """Check every field and every mixer knob; raise one ``ConfigError`` naming the field and what is allowed."""
        n = self.num_stages
        if n < 1:
            raise ConfigError(f"model {self.name!r}: depths must have at least one stage")
        for field in ("dims", "depths", "heads"):
            value = getattr(self, field)
            if len(value) != n or not all(isinstance(v, int) and v > 0 for v in value):
                raise ConfigError(
                    f"model {self.name!r}: {field} must be {n} positive integers (one per stage), got {list(value)}"
                )
        for d, h in zip(self.dims, self.heads):
            if d % h:
                raise ConfigError(
                    f"model {self.name!r}: dims {list(self.dims)} must be divisible by heads {list(self.heads)}"
                )
        if self.img_size < 1 or self.in_chans < 1 or self.num_classes < 0:
            raise ConfigError(f"model {self.name!r}: img_size and in_chans must be >= 1 and num_classes >= 0")
        if self.patch_size not in (1, 2, 4, 8, 16) or (self.stem != "patch" and self.patch_size not in (1, 2, 4)):
            raise ConfigError(
                f"model {self.name!r}: patch_size {self.patch_size} not allowed for stem {self.stem!r}; "
                "allowed: 1, 2, 4 (and 8, 16 with stem 'patch')"
            )
        for field, allowed in (
            ("stem", STEMS),
            ("downsample", DOWNSAMPLERS),
            ("head", HEADS),
            ("pos_encoding", POS_ENCODINGS),
        ):
            if getattr(self, field) not in allowed:
                raise ConfigError(
                    f"model {self.name!r}: {field} {getattr(self, field)!r} unknown; allowed: {', '.join(allowed)}"
                )
        if not 0 <= self.drop_path_rate < 1 or not 0 <= self.drop_rate < 1:
            raise ConfigError(f"model {self.name!r}: drop rates must be in [0, 1)")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"model {self.name!r}: mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not isinstance(self.backend, str):
            raise ConfigError(f"model {self.name!r}: backend must be a string (a name or 'auto'), got {self.backend!r}")
        for stage in range(n):
            for spec in self.stage_pattern(stage):
                try:
                    mech = get_mechanism(spec.name)
                except AttnZooError as exc:
                    raise ConfigError(f"model {self.name!r}, stage {stage}: {exc}") from None
                if self.backend != "auto" and self.backend not in mech.backends:
                    raise ConfigError(
                        f"model {self.name!r}: unknown backend {self.backend!r} for mechanism {spec.name!r} "
                        f"(it offers {', '.join(mech.backends)}); allowed for this model: "
                        f"{', '.join(self.allowed_backends())}"
                    )
                try:
                    for occurrence in range(len(mech.cls.block_pattern)):
                        knobs = mech.resolve_knobs(spec.knobs, stage=stage, occurrence=occurrence)
                        if self.backend != "auto":
                            mech.cls.check_backend(self.backend, knobs)
                except AttnZooError as exc:
                    raise ConfigError(f"model {self.name!r}, stage {stage}: {exc}") from None
        return self

    def allowed_backends(self) -> tuple[str, ...]:
        """Backend names every mechanism of this model offers (what ``backend`` may force), with ``"auto"``."""
        common: list[str] | None = None
        for name in self.mechanisms():
            offered = get_mechanism(name).backends
            common = list(offered) if common is None else [b for b in common if b in offered]
        return ("auto", *(common or ()))

    def check_backend_runs(self, device: Any) -> None:
        """Raise ``BackendUnavailableError`` if the forced ``backend`` is not a usable path on ``device`` here.

        Forward-only parity paths (natten or flex on CPU) count as unavailable: a suite or benchmark trains or
        times backward passes. ``"auto"`` always resolves (every mechanism has a plain-torch path).
        """
        import torch

        from attn_zoo.layers.backends import unavailable_reason

        if self.backend == "auto":
            return
        reason = unavailable_reason(self.backend, torch.device(device))
        if reason is not None:
            allowed = [b for b in self.allowed_backends() if b == "auto" or unavailable_reason(b, device) is None]
            raise BackendUnavailableError(
                f"model {self.name!r}: backend {self.backend!r} is not available on {device}: {reason}; "
                f"available here: {', '.join(allowed)}"
            )

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists, per-stage knobs as ``{"per_stage": [...]}``)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "mixer"}
        out["mixer"] = [[spec.to_dict() for spec in self.stage_pattern(s)] for s in range(self.num_stages)]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from a plain dict (a suite file's ``[model]`` table); unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise UnknownNameError("model field", sorted(unknown)[0], fields)
        kwargs = dict(data)
        for key in ("dims", "depths", "heads"):
            if key in kwargs:
                if not isinstance(kwargs[key], (list, tuple)):
                    raise ConfigError(f"model field {key!r} must be a list, got {kwargs[key]!r}")
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)
