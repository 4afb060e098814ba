"""Values against type hints: the one checker behind the knobs' types (``registry``) and the suite
sections' fields (``grid.checks``, ``measure.profile.MeasureConfig``).

:func:`convert` answers whether a plain value (what TOML, JSON or a command line gives) fits an annotation
and returns it converted (an int where a float is expected becomes a float; a list where a tuple is
expected becomes a tuple). Floats must be finite: NaN and infinities fit no annotation. :func:`type_name`
names an annotation in two styles: ``"short"`` (``int or none``, ``attn-zoo list``'s knob types) and
``"prose"`` (``an integer``, the suite checks' ``must be ...`` messages).
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["convert", "fits", "type_name", "union_args"]


def union_args(annotation: Any) -> tuple[Any, ...]:
    """The members of a union annotation (``int | None`` -> ``(int, NoneType)``), else the annotation alone."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def convert(value: Any, annotation: Any) -> tuple[bool, Any]:
    """``(True, converted)`` when ``value`` fits ``annotation``, else ``(False, None)``."""
    for member in union_args(annotation):
        ok, out = _convert_one(value, member)
        if ok:
            return True, out
    return False, None


def fits(value: Any, annotation: Any) -> bool:
    return convert(value, annotation)[0]


def _convert_one(value: Any, a: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(a)
    if a is Any:
        return True, value
    if a is type(None):
        return value is None, None
    if origin is Literal:
        choices = typing.get_args(a)
        return (value in choices and type(value) in {type(c) for c in choices}), value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, None
        args = typing.get_args(a)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [convert(v, args[0]) for v in value]
        else:
            if len(value) != len(args):
                return False, None
            items = [convert(v, t) for v, t in zip(value, args)]
        if not all(ok for ok, _ in items):
            return False, None
        return True, tuple(v for _, v in items)
    if origin in (dict, Mapping) or a in (dict, Mapping):
        return isinstance(value, Mapping), value
    if a is bool:
        return isinstance(value, bool), value
    if a is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if a is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else None
    if a is str:
        return isinstance(value, str), value
    if isinstance(a, type):
        return isinstance(value, a), value
    return True, value  # a hint this checker does not read (a string, a TypeVar): the owner checks it


_PROSE = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}


def type_name(annotation: Any, style: str = "short") -> str:
    """``style="short"``: ``int or none``, ``list of int``, ``'a' | 'b'``; ``style="prose"``: ``an integer``,
    ``a list of integers``, ``a finite number or a string`` (none left out)."""
    prose = style == "prose"
    parts = []
    for a in union_args(annotation):
        origin = typing.get_origin(a)
        if a is type(None):
            if not prose:
                parts.append("none")
        elif origin is Literal:
            parts.append(" | ".join(repr(c) for c in typing.get_args(a)))
        elif origin is tuple:
            args = typing.get_args(a)
            if prose:
                inner = type_name(args[0], style) if args else "value"
                parts.append(f"a list of {inner.removeprefix('an ').removeprefix('a ')}s")
            elif len(args) == 2 and args[1] is Ellipsis:
                parts.append(f"list of {type_name(args[0], style)}")
            else:
                parts.append(f"list of {len(args)} {' / '.join(sorted({type_name(x, style) for x in args}))}")
        elif prose and a in _PROSE:
            parts.append(_PROSE[a])
        else:
            parts.append(getattr(a, "__name__", str(a)))
    return " or ".join(parts)
