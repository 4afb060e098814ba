"""The example suites in suites/: each one validates completely, and a CPU-sized version of it (tiny data and
budget, two cells) runs. A suite naming a mechanism, preset or data source this checkout does not register
is skipped with the missing names (the suites are data; the mechanisms arrive as modules)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attn_zoo.backbone.presets import list_presets
from attn_zoo.data.sources import SOURCES
from attn_zoo.grid import Store, load_suite, run_suite
from attn_zoo.grid.cell import run_cell
from attn_zoo.grid.suite import _read
from attn_zoo.registry import list_mechanisms

SUITES = sorted((Path(__file__).resolve().parent.parent / "suites").glob("*.toml"))


def needs(raw: dict) -> dict[str, set[str]]:
    grid = raw.get("grid", {})
    mechanisms = set(grid.get("mechanism", [])) | set(raw.get("mechanisms", {})) | set(raw.get("overrides", {}))
    if "mechanism" in raw.get("model", {}):
        mechanisms.add(raw["model"]["mechanism"])
    presets = set(grid.get("preset", [])) | ({raw["model"]["preset"]} if "preset" in raw.get("model", {}) else set())
    sources = {d.get("source") for d in [raw.get("data", {}), *grid.get("data", [])]} - {None}
    return {
        "mechanisms": mechanisms - set(list_mechanisms()) - set(list_presets()),
        "presets": presets - set(list_presets()),
        "data sources": sources - set(SOURCES),
    }


def cpu_sized(raw: dict) -> dict:
    """Overrides that make any suite's cells take seconds on a CPU."""
    over = {"budget.metric": "none", "measure.repeats": 1, "measure.warmup": 0, "measure.threads": 1}
    if raw.get("model", {}).get("img_size", 32) > 64 or any(
        p not in ("zoo_s32",) for p in raw.get("grid", {}).get("preset", [])
    ):
        over["model.img_size"] = 64
    if "train" in raw:
        over.update({"data.train_size": 64, "data.val_size": 32, "data.test_size": 64, "train.batch_size": 32})
        over["train.steps" if "steps" in raw["train"] else "train.epochs"] = 2 if "steps" in raw["train"] else 1
    return over


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_example_suite_validates_and_a_cpu_sized_version_runs(path, tmp_path):
    raw = _read(path, (), [])
    missing = {k: sorted(v) for k, v in needs(raw).items() if v}
    if missing:
        pytest.skip(f"{path.name} needs {missing}, not registered in this checkout")
    full = load_suite(path)
    assert full.cells and full.description
    small = load_suite(path, cpu_sized(raw))
    assert len(small.cells) == len(full.cells)  # same grid, smaller cells
    two = dataclasses.replace(small, cells=small.cells[:2])
    summary = run_suite(two, tmp_path / f"{small.name}.sqlite", runner=lambda c: run_cell(c.spec), progress=False)
    reasons = Store(tmp_path / f"{small.name}.sqlite").frame(status=None)["reason"].dropna().tolist()
    if reasons and all(r.startswith("DataSourceError") for r in reasons):  # e.g. the CIFAR-10 copy is elsewhere
        pytest.skip(f"{path.name}: its data are not on this machine: {reasons[0]}")
    assert summary.ok == len(two.cells), Store(tmp_path / f"{small.name}.sqlite").frame(status=None)["reason"].tolist()
