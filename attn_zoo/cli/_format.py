"""Small helpers the subcommands share: JSON output and plain-text tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from attn_zoo.report.text import table

__all__ = ["note_code_versions", "note_problems", "parse_knobs", "print_json", "table"]


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def parse_knobs(items: Sequence[str]) -> dict[str, Any]:
    """``--knob KEY=VALUE`` items (TOML values; ``{ per_stage = [...] }`` for per-stage) -> knob values."""
    from attn_zoo.backbone.config import parse_knob_value
    from attn_zoo.cli._args import parse_overrides
    from attn_zoo.errors import ConfigError

    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--knob {item!r}: expected KEY=VALUE, e.g. window=4")
    return {key: parse_knob_value(value) for key, value in parse_overrides(list(items)).items()}


def note_problems(store: Any) -> None:
    """Say, one line each on stderr, which malformed rows the last read of ``store`` left out, and whether
    its rows come from more than one version of the code (they are then never aggregated together)."""
    import sys

    for line in getattr(store, "problems", []):
        print(f"attn-zoo: note: {line}", file=sys.stderr)


def note_code_versions(frame: Any) -> None:
    """One line on stderr when ``frame``'s rows were computed by more than one version of the code."""
    import sys

    from attn_zoo.report.tables import code_versions

    mixed = {part: n for part, n in code_versions(frame).items() if n > 1}
    if mixed:
        shown = ", ".join(f"{part}: {n} versions" for part, n in mixed.items())
        print(
            f"attn-zoo: note: the store mixes code versions ({shown}); rows of different code are never "
            "aggregated together (column code)",
            file=sys.stderr,
        )
