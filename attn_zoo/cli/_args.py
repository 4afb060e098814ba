"""Values on the command line. ``--set KEY=VALUE`` items are TOML values (:func:`parse_overrides`); numbers
are finite and in range, or one line saying the allowed range.

``type=number(low=0, low_open=True)`` in ``add_argument``; argparse turns the ``ArgumentTypeError`` into
``attn-zoo: error: argument --timeout: ...`` (exit 2, no traceback).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from attn_zoo.errors import ConfigError


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    low_open: bool = False,
    unit: str = "",
) -> Callable[[str], float | int]:
    """An argparse type: a finite number (an integer with ``integer``) in ``[low, high]`` (``(low, high]``
    with ``low_open``)."""
    kind = "an integer" if integer else "a finite number"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    allowed = kind + (" " + " and ".join(parts) if parts else "") + (f" ({unit})" if unit else "")

    def parse(text: str) -> float | int:
        try:
            value: float | int = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}") from None
        bad = not math.isfinite(value)
        bad = bad or (low is not None and (value <= low if low_open else value < low))
        bad = bad or (high is not None and value > high)
        if bad:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}")
        return value

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in some messages
    return parse


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` items -> ``{KEY: value}``: a TOML value, or the text itself for a bare word."""
    import tomllib

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=1")
        try:
            overrides[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key] = value  # a bare word is a string
    return overrides
