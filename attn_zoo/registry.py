"""The mechanism registry: register by name, list with knobs and defaults, create by name with knobs.

A mechanism's knobs are the keyword-only arguments of its constructor (after ``dim``, ``num_heads`` and
``feat_size``), with their type hints and defaults. Descriptions come from the class docstring's ``Args:``.
Built-in mechanisms live in :mod:`attn_zoo.mechanisms`; third-party ones register through the
``attn_zoo.mechanisms`` entry-point group or a local file (see :func:`load_plugin_file`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from attn_zoo.errors import ConfigError, KnobError, UnknownNameError
from attn_zoo.names import Registry
from attn_zoo.typecheck import convert, type_name, union_args

if TYPE_CHECKING:  # imported where used: the CLI reads this module without loading torch
    import importlib.metadata

    from attn_zoo.mechanisms.base import Mixer

ENTRY_POINT_GROUP = "attn_zoo.mechanisms"
_RESERVED = ("self", "dim", "num_heads", "feat_size")


@dataclasses.dataclass(frozen=True)
class PerStage:
    """A knob value given per stage, e.g. ScalableViT's ``r_n = PerStage((8, 4, 2, 1))``.

    In a suite file: ``r_n = { per_stage = [8, 4, 2, 1] }``. Stages past the end reuse the last value.
    """

    values: tuple[Any, ...]

    def at(self, stage: int) -> Any:
        return self.values[min(stage, len(self.values) - 1)]


@dataclasses.dataclass(frozen=True)
class KnobSpec:
    """One knob: its name, type hint, default and description."""

    name: str
    annotation: Any
    default: Any
    doc: str = ""

    @property
    def choices(self) -> tuple[Any, ...] | None:
        lits = [a for a in union_args(self.annotation) if typing.get_origin(a) is Literal]
        return tuple(c for lit in lits for c in typing.get_args(lit)) or None

    @property
    def type_name(self) -> str:
        return type_name(self.annotation)

    def validate(self, value: Any, owner: str) -> Any:
        """Return ``value`` converted to the knob's type, or raise ``KnobError`` saying what is allowed."""
        ok, converted = convert(value, self.annotation)
        if not ok:
            raise KnobError(
                f"{owner}: knob {self.name!r} got {value!r} ({type(value).__name__}); allowed: {self.type_name}"
            )
        return converted


@dataclasses.dataclass(frozen=True)
class MechanismSpec:
    """A registered mechanism: what ``attn-zoo list`` shows and what ``create_mechanism`` builds."""

    name: str
    cls: type[Mixer]
    knobs: Mapping[str, KnobSpec]
    summary: str
    source: str = "built-in"

    @property
    def paper(self) -> str:
        return self.cls.paper

    @property
    def backends(self) -> tuple[str, ...]:
        return self.cls.backends

    def defaults(self) -> dict[str, Any]:
        return {name: spec.default for name, spec in self.knobs.items()}

    def resolve_knobs(
        self, knobs: Mapping[str, Any] | None = None, *, stage: int = 0, occurrence: int = 0
    ) -> dict[str, Any]:
        """Knob values for one block: constructor defaults < paper stage defaults < block pattern < ``knobs``.

        ``stage`` indexes ``stage_defaults`` and ``PerStage`` values; ``occurrence`` counts this mechanism's
        blocks in the stage and indexes ``block_pattern`` (Swin's shifted blocks are the odd ones).
        """
        knobs = dict(knobs or {})
        unknown = set(knobs) - set(self.knobs)
        if unknown:
            raise UnknownNameError(f"knob of mechanism {self.name!r}", sorted(unknown)[0], self.knobs)
        resolved = self.defaults()
        for key, values in self.cls.stage_defaults.items():
            resolved[key] = values[min(stage, len(values) - 1)]
        pattern = self.cls.block_pattern
        resolved.update(pattern[occurrence % len(pattern)])
        for key, value in knobs.items():
            resolved[key] = value.at(stage) if isinstance(value, PerStage) else value
        owner = f"mechanism {self.name!r}"
        resolved = {key: self.knobs[key].validate(value, owner) for key, value in resolved.items()}
        self.cls.validate_knobs(resolved)
        return resolved

    def validate(self, knobs: Mapping[str, Any], num_stages: int = 4) -> None:
        """Check user knobs for every stage and block position, without building anything."""
        pattern_len = len(self.cls.block_pattern)
        for stage in range(num_stages):
            for occurrence in range(pattern_len):
                self.resolve_knobs(knobs, stage=stage, occurrence=occurrence)


class PluginWarning(RuntimeWarning):
    """A plugin failed to load (the reason is also in :func:`plugin_errors`). ``attn-zoo`` shows it once as
    one line instead of a Python warning."""


_REGISTRY: Registry[MechanismSpec] = Registry("mechanism")  # loaded by _ensure_loaded, not on lookup
_PLUGIN_ERRORS: dict[str, str] = {}
_PLUGIN_FILES: dict[Path, list[str]] = {}  # resolved path -> names the file registered
_LOADED = {"builtins": False, "entry_points": False}
_BUILTIN_PACKAGE = "attn_zoo.mechanisms"
PLUGINS_ENV = "ATTN_ZOO_PLUGINS"
"""Environment variable: plugin files (``os.pathsep``-separated) every process loads on first use, set by the
user. Nothing here writes it: the files given with ``--plugin`` travel to worker processes as arguments
(``Cell.plugins``, the cell worker's ``--plugin``, the memory worker's job)."""


def register_mechanism(
    name: str | None = None, *, source: str | None = None, replace: bool = False
) -> Callable[[type[Mixer]], type[Mixer]]:
    """Class decorator: ``@register_mechanism("swin")`` registers a :class:`Mixer` subclass by name.

    ``source`` says where it came from in ``attn-zoo list`` (default: ``built-in`` for the package's own
    mechanisms, else the defining module). A name that is taken by another class is an error naming both.
    """

    def wrap(cls: type[Mixer]) -> type[Mixer]:
        from attn_zoo.mechanisms.base import Mixer

        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise TypeError(f"@register_mechanism needs a Mixer subclass, got {cls!r}")
        builtin = cls.__module__.startswith(_BUILTIN_PACKAGE + ".")
        if not builtin:
            _load_builtins()  # a plugin imported first must not take a built-in's name unnoticed
        key = name or cls.__name__.lower()
        if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise ValueError(f"mechanism name {key!r} must be lower_snake_case (letters, digits, _)")
        if key in _REGISTRY and not replace and _REGISTRY[key].cls is not cls:
            old = _REGISTRY[key]
            raise ValueError(
                f"mechanism {key!r} is already registered by {old.cls.__module__}.{old.cls.__qualname__} "
                f"({old.source}); {cls.__module__}.{cls.__qualname__} must pick another name"
            )
        label = source or ("built-in" if builtin else f"module {cls.__module__}")
        spec = MechanismSpec(key, cls, _read_knobs(cls), _summary(cls), label)
        for pattern in cls.block_pattern:
            unknown = set(pattern) - set(spec.knobs)
            if unknown:
                raise ValueError(f"{key}: block_pattern names unknown knobs {sorted(unknown)}")
        cls.name = key
        _REGISTRY[key] = spec
        return cls

    return wrap


def _load_builtins() -> None:
    if not _LOADED["builtins"]:
        _LOADED["builtins"] = True
        import attn_zoo.mechanisms as package

        # one file per mechanism: every module of the package registers itself on import
        for info in pkgutil.iter_modules(package.__path__):
            if info.name != "base" and not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")


def _ensure_loaded() -> None:
    _load_builtins()
    if not _LOADED["entry_points"]:
        _LOADED["entry_points"] = True
        load_entry_points()
        for item in os.environ.get(PLUGINS_ENV, "").split(os.pathsep):
            if item:
                try:
                    load_plugin_file(item)
                except ConfigError as exc:  # like a broken entry point: report it, load the rest
                    _report(f"file {item}", f"{exc} (named in ${PLUGINS_ENV})")


def _report(key: str, message: str) -> None:
    _PLUGIN_ERRORS[key] = message
    warnings.warn(message, PluginWarning, stacklevel=3)


def _set_source(names: list[str], source: str) -> None:
    for key in names:
        _REGISTRY[key] = dataclasses.replace(_REGISTRY[key], source=source)


def load_entry_points() -> dict[str, str]:
    """Import every installed plugin of the ``attn_zoo.mechanisms`` entry-point group; return the errors.

    An entry point ``NAME = "package.module:Class"`` registers ``Class`` (a :class:`Mixer` subclass) as
    ``NAME``; ``NAME = "package.module"`` imports a module that registers its mechanisms itself. A plugin
    that fails in any way (import error, bad class, a name already taken) is reported by name in a
    ``RuntimeWarning`` and in :func:`plugin_errors`; whatever it registered is removed, the others load.
    """
    _load_builtins()
    import importlib.metadata  # here, not at the top: the CLI reads this module at start-up

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        package = f"{dist.name} {dist.version}" if dist is not None else "an installed package"
        where = f"plugin {ep.name!r} from {package} ({ep.value})"
        before = dict(_REGISTRY)
        try:
            added = _load_entry_point(ep, before)
        except Exception as exc:  # a plugin may fail in any way; report it and go on
            for key in set(_REGISTRY) - set(before):
                del _REGISTRY[key]
            _report(f"entry point {ep.name}", f"{where} failed to load: {type(exc).__name__}: {exc}")
            continue
        _set_source(added, f"plugin {package}")
    return dict(_PLUGIN_ERRORS)


def _load_entry_point(ep: importlib.metadata.EntryPoint, before: Mapping[str, MechanismSpec]) -> list[str]:
    if ep.name in before and before[ep.name].source == "built-in":
        old = before[ep.name].cls
        raise ConfigError(
            f"the name {ep.name!r} is taken by the built-in mechanism {old.__module__}.{old.__qualname__}; "
            f"rename the entry point (and the mechanism) in the plugin's pyproject.toml"
        )
    from attn_zoo.mechanisms.base import Mixer

    obj = ep.load()
    if isinstance(obj, types.ModuleType):
        added = sorted(set(_REGISTRY) - set(before))
        if not added:
            raise ConfigError(f"module {obj.__name__} registered no mechanism (decorate a Mixer subclass)")
        return added
    if not (isinstance(obj, type) and issubclass(obj, Mixer)):
        raise ConfigError(f"expected a Mixer subclass (or a module registering one), got {obj!r}")
    if obj.name and obj.name in _REGISTRY and _REGISTRY[obj.name].cls is obj and obj.name != ep.name:
        raise ConfigError(
            f"the class registers itself as {obj.name!r} but the entry point is named {ep.name!r}; use one name: "
            f"@register_mechanism({ep.name!r}) or rename the entry point to {obj.name!r}"
        )
    if not obj.__dict__.get("name"):
        raise ConfigError(
            f"class {obj.__qualname__} is not registered: decorate it with @register_mechanism({ep.name!r}) "
            "(the entry point's name), so that --plugin files, worker processes and the kit find it too"
        )
    register_mechanism(ep.name)(obj)
    return sorted(set(_REGISTRY) - set(before)) or [ep.name]


def load_plugin_file(path: str | Path) -> list[str]:
    """Import a local Python file that registers mechanisms (``@register_mechanism``); return their names.

    Loading the same file again returns the same names without running it twice; a file that is the
    source of an installed plugin's module (an editable install) reuses that module. The process's
    environment is left alone: a worker process that needs the file is given it (``Cell.plugins``).
    Raises :class:`ConfigError` naming the file when it is missing or fails to import (whatever it
    registered before failing is removed).
    """
    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise ConfigError(f"plugin file {str(path)!r} does not exist or is not a .py file")
    _ensure_loaded()
    resolved = path.resolve()
    module = _module_from_file(resolved)
    if module is not None:  # already imported (a second load, or the module of an installed plugin)
        names = _reregister(module, resolved)
    else:
        names = _exec_plugin_file(path, resolved)
    # a file may register no mechanism (a preset or a data source instead): not an error here
    _PLUGIN_FILES[resolved] = names
    _PLUGIN_ERRORS.pop(f"file {path}", None)
    return names


def _module_from_file(resolved: Path) -> types.ModuleType | None:
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and file.endswith(".py") and Path(file).resolve() == resolved:
            return module
    return None


def _reregister(module: types.ModuleType, resolved: Path) -> list[str]:
    """Names of the mechanisms ``module`` defines, registering again any that a reset registry dropped."""
    from attn_zoo.mechanisms.base import Mixer

    names = []
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Mixer) and obj.__module__ == module.__name__ and obj.name:
            if obj.name not in _REGISTRY:
                register_mechanism(obj.name, source=f"file {resolved}")(obj)
            if _REGISTRY[obj.name].cls is obj:
                names.append(obj.name)
    return sorted(names)


def _exec_plugin_file(path: Path, resolved: Path) -> list[str]:
    before = set(_REGISTRY)
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    module_name = f"attn_zoo_plugin_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise ConfigError(f"plugin file {str(path)!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        for key in set(_REGISTRY) - before:
            del _REGISTRY[key]
        raise ConfigError(f"plugin file {str(path)!r} failed to load: {type(exc).__name__}: {exc}") from exc
    added = sorted(set(_REGISTRY) - before)
    _set_source(added, f"file {resolved}")
    return added


def plugin_errors() -> dict[str, str]:
    """Plugins that failed to load, by entry point or file, with the reason."""
    _ensure_loaded()
    return dict(_PLUGIN_ERRORS)


def plugin_files() -> list[Path]:
    """The plugin files loaded in this process (resolved paths)."""
    return list(_PLUGIN_FILES)


def list_mechanisms() -> dict[str, MechanismSpec]:
    """All registered mechanisms by name (built-ins, then plugins)."""
    _ensure_loaded()
    return dict(sorted(_REGISTRY.items()))


def get_mechanism(name: str) -> MechanismSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        err = UnknownNameError("mechanism", name, _REGISTRY)
        notes = [*_PLUGIN_ERRORS.values(), *_empty_file_notes()]
        if notes:  # the mechanism may be in a plugin that failed or registered nothing: say so
            err.args = (f"{err.args[0]}; note: {'; '.join(notes)}",)
        raise err from None


def _empty_file_notes() -> list[str]:
    """One line per loaded plugin file that registered no mechanism, naming undecorated Mixer classes."""
    from attn_zoo.mechanisms.base import Mixer

    notes = []
    for path, names in _PLUGIN_FILES.items():
        if names:
            continue
        module = _module_from_file(path)
        plain = [
            obj.__name__
            for obj in vars(module or types.ModuleType("empty")).values()
            if isinstance(obj, type) and issubclass(obj, Mixer) and obj.__module__ == getattr(module, "__name__", "")
        ]
        hint = (
            f"{', '.join(plain)} {'is a Mixer subclass' if len(plain) == 1 else 'are Mixer subclasses'} without "
            "@register_mechanism"
            if plain
            else "no Mixer subclass decorated with @register_mechanism"
        )
        notes.append(f"plugin file {path.name!r} registered no mechanism ({hint})")
    return notes


def create_mechanism(
    name: str,
    dim: int,
    num_heads: int,
    *,
    feat_size: tuple[int, int] | None = None,
    backend: str = "auto",
    stage: int = 0,
    occurrence: int = 0,
    **knobs: Any,
) -> Mixer:
    """Build mechanism ``name`` with keyword knobs; unknown names and knobs list what exists."""
    spec = get_mechanism(name)
    resolved = spec.resolve_knobs(knobs, stage=stage, occurrence=occurrence)
    mixer = spec.cls(dim, num_heads, feat_size=feat_size, **resolved)
    mixer.set_backend(backend)
    return mixer


# -- reading knobs from signatures ----------------------------------------------------------------------
def _read_knobs(cls: type[Mixer]) -> dict[str, KnobSpec]:
    sig = inspect.signature(cls.__init__)
    module = sys.modules.get(cls.__module__)
    hints = typing.get_type_hints(cls.__init__, globalns=vars(module) if module else None)
    docs = _arg_docs(inspect.getdoc(cls) or "")
    knobs = {}
    for pname, param in sig.parameters.items():
        if pname in _RESERVED or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind is not param.KEYWORD_ONLY:
            raise TypeError(f"{cls.__name__}: knob {pname!r} must be keyword-only (put it after `*`)")
        if param.default is param.empty:
            raise TypeError(f"{cls.__name__}: knob {pname!r} needs a default")
        if pname not in hints:
            raise TypeError(f"{cls.__name__}: knob {pname!r} needs a type hint")
        knobs[pname] = KnobSpec(pname, hints[pname], param.default, docs.get(pname, ""))
    return knobs


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def _arg_docs(doc: str) -> dict[str, str]:
    out: dict[str, str] = {}
    in_args, current = False, None
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Knobs:"):
            in_args = True
            continue
        if in_args:
            if line and not line.startswith(" "):
                break
            m = re.match(r"^\s{2,8}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            if m and (current is None or len(line) - len(line.lstrip()) <= 4):
                current = m.group(1)
                out[current] = m.group(2).strip()
            elif current and line.strip():
                out[current] += " " + line.strip()
    return out


@contextlib.contextmanager
def isolated_registry() -> Iterator[None]:
    """Undo every registration and plugin load made inside the block.

    For tests that register throw-away mechanisms or load plugin files: the process's registry is as before.
    """
    _ensure_loaded()
    saved = (dict(_REGISTRY), dict(_PLUGIN_ERRORS), dict(_PLUGIN_FILES), dict(_LOADED))
    names = {spec.cls: spec.cls.__dict__.get("name") for spec in _REGISTRY.values()}
    try:
        yield
    finally:
        for store, old in zip((_REGISTRY, _PLUGIN_ERRORS, _PLUGIN_FILES, _LOADED), saved):
            store.clear()
            store.update(old)
        for cls, name in names.items():
            cls.name = name or ""
