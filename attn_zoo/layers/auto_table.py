"""Which path ``auto`` takes, by the call's shapes: a small table of measurements stored with the project.

``auto_table.json`` (beside this file) holds, per device type and attention op, measured rows. A row is a call's
shape: ``n_q`` queries and ``n_k`` keys per query of one sequence, ``seqs`` sequences (batch x windows x heads),
``head_dim`` and ``v_dim``, whether a bias is added, whether gradients are needed; for neighbourhood attention
``n_q`` is the map's tokens, ``n_k = k_h * k_w`` the window, and the border. With it: each path's median time
(``ms``) and its median per-round ratio to the first path (``rel``, paired under the same momentary load).

``auto`` takes the row nearest to the call (same bias, gradient and border flags when such rows exist; distance:
the sum of ``|log ratio|`` of ``n_k``, ``head_dim``, ``v_dim``, ``n_q`` and ``seqs``) and tries its paths
fastest first (by ``rel``), then the mechanism's other paths in the device's default order. A device type or op
without rows uses that default order, or the mechanism's own under ``by_mechanism`` (the CUDA section holds
today's per-mechanism CUDA order there, to be replaced by a measured one from a GPU run).

The table's provenance (command, machine, date, commit) is in its ``provenance`` key and in docs/backends.md;
``benchmarks/bench_auto_table.py`` measures it.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("auto_table.json")


@functools.cache
def load() -> dict[str, Any]:
    """The stored table (read once per process)."""
    return json.loads(TABLE_PATH.read_text())


def nearest_row(op: str, device_type: str, call: Mapping[str, Any]) -> dict[str, Any] | None:
    """The measured row nearest to ``call`` for ``op`` on ``device_type``; None when there are no rows."""
    rows = load().get(device_type, {}).get(op, {}).get("rows", [])
    if not rows or not any(call.get(key) for key in ("n_k", "head_dim", "v_dim", "n_q", "seqs")):
        return None  # no rows, or a call that says nothing of its shapes: the default order
    flags = [r for r in rows if all(r.get(f) == call.get(f) for f in ("bias", "grad", "border") if f in call)]
    rows = flags or rows

    def distance(row: Mapping[str, Any]) -> float:
        total = 0.0
        for key in ("n_k", "head_dim", "v_dim", "n_q", "seqs"):
            if call.get(key) and row.get(key):
                total += abs(math.log(float(call[key]) / float(row[key])))
        return total

    return min(rows, key=distance)


def default_order(op: str, device_type: str, mechanism: str | None = None) -> tuple[str, ...]:
    """The order for ``op`` on ``device_type`` when no measured row applies: the mechanism's own entry under
    ``by_mechanism`` when there is one (the CUDA section), else the op's ``default``."""
    section = load().get(device_type, {}).get(op, {})
    own = section.get("by_mechanism", {}).get(mechanism or "")
    return tuple(own if own else section.get("default", ()))


def auto_order(
    op: str, device_type: str, call: Mapping[str, Any], offered: Sequence[str], mechanism: str | None = None
) -> tuple[str, ...]:
    """The paths ``auto`` tries for ``call``, restricted to ``offered``: the nearest row's paths fastest first, then
    the mechanism's own list (exhaustive: a path missing from it is not tried), or else the op's default order
    followed by any other offered path."""
    row = nearest_row(op, device_type, call)
    speed = (row.get("rel") or row["ms"]) if row else {}
    measured = sorted(speed, key=speed.get)
    section = load().get(device_type, {}).get(op, {})
    own = section.get("by_mechanism", {}).get(mechanism or "")
    rest = tuple(own) if own else (*section.get("default", ()), *offered)
    order: list[str] = []
    for name in (*measured, *rest):
        if name in offered and name not in order:
            order.append(name)
    return tuple(order)
