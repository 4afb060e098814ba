"""Which code computed a cell's numbers: fingerprints that key a cell's result to its code.

A cell's code is ``{"harness": SHA, "mechanisms": {name: SHA}, "plugins": {name: "dist==version"}}``:

- ``harness``: sha256 over the files that shape every number -- ``backbone/``, ``layers/``, ``data/``,
  ``train/``, ``measure/``, ``mechanisms/base.py``, ``grid/cell.py`` and ``registry.py`` -- each file's path relative to
  the package and its bytes, in sorted order;
- ``mechanisms``: per mechanism of the cell, sha256 of the source file of the module that defines it (a
  built-in's ``mechanisms/NAME.py``, a plugin file, or an installed plugin's module);
- ``plugins``: an installed plugin's distribution name and version (a plugin file has none).

Only file contents count (never paths on this machine, mtimes or the checkout), so two checkouts of one commit
agree, and the parts are separate, so a change to ``msda.py`` re-runs MSDA's cells and no others. The
``code_fp`` stored with a row is a short hash of the whole mapping; :func:`changed_parts` names what differs
between two mappings (``["msa_conv"]``, ``["the harness"]``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attn_zoo
from attn_zoo.report.tables import HARNESS  # the name changed_parts gives the harness

PACKAGE_ROOT = Path(attn_zoo.__file__).resolve().parent
#: what the harness fingerprint covers, relative to the package (directories: every .py file under them)
HARNESS_PARTS = (
    "backbone",
    "layers",
    "data",
    "train",
    "budget.py",
    "measure",
    "mechanisms/base.py",
    "grid/cell.py",
    "registry.py",
)
UNRECORDED = "unrecorded (stored before code fingerprints)"


def _sha(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(8, "little"))
        digest.update(chunk)
    return digest.hexdigest()


def harness_files() -> list[Path]:
    files: list[Path] = []
    for part in HARNESS_PARTS:
        path = PACKAGE_ROOT / part
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else [])
    return sorted(set(files), key=lambda p: p.relative_to(PACKAGE_ROOT).as_posix())


@functools.lru_cache(maxsize=1)
def harness_fingerprint() -> str:
    """sha256 over the harness files (relative path and bytes of each)."""
    chunks: list[bytes] = []
    for path in harness_files():
        chunks += [path.relative_to(PACKAGE_ROOT).as_posix().encode(), path.read_bytes()]
    return _sha(chunks)


def module_source(module_name: str) -> bytes:
    """The source bytes of an imported module's file (empty when it has none, e.g. built into Python)."""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file:
        return b""
    path = Path(file)
    if path.suffix == ".pyc":  # pragma: no cover - sourceless installs
        return path.read_bytes()
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _distribution(module_name: str) -> str | None:
    """``"dist==version"`` of the installed distribution that holds the module's top-level package."""
    top = module_name.split(".")[0]
    if top == "attn_zoo":
        return None
    names = importlib.metadata.packages_distributions().get(top) or []
    for name in names:
        try:
            return f"{name}=={importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            continue
    return None


def mechanism_fingerprint(name: str) -> tuple[str, str | None]:
    """``(sha256 of the defining module's source, "dist==version" or None)`` of a registered mechanism."""
    from attn_zoo.registry import get_mechanism

    module_name = get_mechanism(name).cls.__module__
    return _sha([module_source(module_name)]), _distribution(module_name)


def cell_code(spec: Any) -> dict[str, Any]:
    """The code mapping of a resolved cell (a ``CellSpec`` or its dict; see the module docstring)."""
    mechanisms: dict[str, str] = {}
    plugins: dict[str, str] = {}
    for name in _mechanisms_of(spec):
        sha, dist = mechanism_fingerprint(name)
        mechanisms[name] = sha
        if dist:
            plugins[name] = dist
    return {"harness": harness_fingerprint(), "mechanisms": mechanisms, "plugins": plugins}


def code_id(code: Mapping[str, Any] | None) -> str | None:
    """The short hash stored as a row's ``code_fp``."""
    if not code:
        return None
    return hashlib.sha256(json.dumps(code, sort_keys=True).encode()).hexdigest()[:16]


def changed_parts(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What differs between a stored code mapping and the current one: mechanism names, then the harness."""
    if not isinstance(old, Mapping) or not old:
        return [UNRECORDED]
    parts = []
    old_mech = old.get("mechanisms") if isinstance(old.get("mechanisms"), Mapping) else {}
    for name, sha in new.get("mechanisms", {}).items():
        if old_mech.get(name) != sha or (old.get("plugins") or {}).get(name) != new.get("plugins", {}).get(name):
            parts.append(name)
    if old.get("harness") != new.get("harness"):
        parts.append(HARNESS)
    return parts or ["the set of mechanisms"]


def _mechanisms_of(spec: Any) -> list[str]:
    from attn_zoo.registry import list_mechanisms

    known = set(list_mechanisms())
    mechanism = spec.get("mechanism") if isinstance(spec, Mapping) else spec.mechanism
    names = str(mechanism or "").split("+")
    return sorted({n for n in names if n in known})
