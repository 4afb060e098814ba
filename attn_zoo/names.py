"""One small registry of named things (presets, executors, data sources, ...), read like a dict.

Each kind keeps its own wording: ``what`` names it in the errors (``unknown preset 'x'; allowed: ...``),
``missing`` replaces that error where a kind has its own message, ``unique`` refuses a second, different
object under a taken name, and ``load`` (called once, on the first lookup) imports the modules that
register the built-in ones. It sits at the bottom of the package: it imports nothing of attn_zoo but errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar

from attn_zoo.errors import UnknownNameError

T = TypeVar("T")


class Registry(MutableMapping[str, T], Generic[T]):
    """``name -> object`` in registration order; ``registry[name]`` raises the kind's one-line error for an
    unknown name; ``registry[name] = obj`` is :meth:`add`."""

    def __init__(
        self,
        what: str,
        *,
        missing: Callable[[str, list[str]], Exception] | None = None,
        unique: bool = False,
        load: Callable[[], None] | None = None,
    ):
        self.what, self._missing, self._unique, self._load = what, missing, unique, load
        self._items: dict[str, T] = {}

    def _loaded(self) -> dict[str, T]:
        if self._load is not None:
            load, self._load = self._load, None  # before calling: the modules it imports register here
            load()
        return self._items

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` (a second, different one is an error when the registry is unique)."""
        if self._unique and name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda obj: self.add(name, obj)

    def __getitem__(self, name: str) -> T:
        items = self._loaded()
        if name in items:
            return items[name]
        allowed = sorted(items)
        raise (self._missing(name, allowed) if self._missing else UnknownNameError(self.what, name, allowed))

    def get(self, name: str, default: T | None = None) -> T | None:  # type: ignore[override]
        return self._loaded().get(name, default)

    def __setitem__(self, name: str, obj: T) -> None:
        self.add(name, obj)

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._loaded()))

    def __len__(self) -> int:
        return len(self._loaded())
