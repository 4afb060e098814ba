"""Stored cell ids stay what they were: every suite in suites/ and one bench invocation resolve to the same
cell_hash / config_hash as before the typed cell spec (a changed id would orphan every stored row)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from unittest import mock

import pytest

from attn_zoo.cli import bench_cmd, build_parser
from attn_zoo.grid.suite import Cell, load_suite

SUITES = Path(__file__).resolve().parent.parent / "suites"

# suite file -> (cells, first "cell_id:config_id", digest of all of them in order)
EXPECTED = {
    "cifar10_equal_macs.toml": (21, "e791201f39dbedf6:e2b2730182f85a8f", "479527a5e6beff5f"),
    "msda_ablation.toml": (36, "5662b00a96a62efc:89048b69932bf259", "7ae2746e14cfe15c"),
    "paper_presets.toml": (5, "430a53b5537b1842:12ea83a21a568fe4", "a44d22c4195d232b"),
    "pathfinder_budget_sweep.toml": (84, "4159e47e761e88ad:fea302db23ebca9d", "b397db33231396c6"),
    "pathfinder_equal_macs.toml": (35, "dbbfb8a39080d0ec:d6ceddf698324443", "bd411a639a6ab220"),
    "pathfinder_medium_equal_macs.toml": (35, "dd61df567555513f:459149c36cd76e3a", "2cf17391c751e626"),
    "quick.toml": (14, "63d98d9f7c497aeb:188b943574bb1793", "2caca6e5655f19ea"),
    "scaling.toml": (8, "19a899ad815bfbf7:c6057242827216ab", "403de83e05319308"),
    "ssa_ablation.toml": (48, "50ae91514c186fd0:74eadfded5701ebe", "9382d42106bc4cfe"),
    "tiny.toml": (2, "86081922dcd87b6f:42e83a95f38ca882", "ce1b57477146dc64"),
    "window_sizes.toml": (27, "d61e1ccd71bb5b68:18818f58916119b7", "d5621fd6f559bdca"),
}
BENCH = (4, "b57cf194632ef082:54284638a29577fb", "4d8f6b942e745039")


def _summary(cells) -> tuple[int, str, str]:
    ids = [f"{c.cell_id}:{c.config_id}" for c in cells]
    return len(ids), ids[0], hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16]


def test_every_suite_is_pinned():
    assert sorted(p.name for p in SUITES.glob("*.toml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_suite_cell_ids_unchanged(name):
    suite = load_suite(SUITES / name, allow_long=True)
    assert _summary(suite.cells) == EXPECTED[name]


def test_bench_cell_ids_unchanged():
    argv = ["bench", "swin", "swin_t", "--img-size", "64", "--batch", "1", "2", "--knob", "window=4"]
    args = build_parser(["bench"]).parse_args([*argv, "--mode", "fwd", "train"])
    with mock.patch.object(bench_cmd.uuid, "uuid4", return_value=uuid.UUID(int=7)):
        cells = [Cell(spec) for spec in bench_cmd.build_cells(args)]
    assert _summary(cells) == BENCH


RESULTS = SUITES.parent / "results"


def _stored_specs() -> list[tuple[str, str, str]]:
    import sqlite3

    rows = []
    for path in sorted(RESULTS.glob("**/*.sqlite")):
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)  # writes nothing beside the store
        try:
            rows += [(path.name, cell_id, spec) for cell_id, spec in db.execute("SELECT cell_id, spec FROM cells")]
        finally:
            db.close()
    return rows


def _covers(new: object, old: object) -> bool:
    """``new`` holds every value of ``old`` (older stores lack keys added since, which take defaults)."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(k in new and _covers(new[k], v) for k, v in old.items())
    return new == old


def test_every_committed_stored_spec_loads():
    import json

    from attn_zoo.train.spec import CellSpec

    rows = _stored_specs()
    assert rows, f"no committed stores under {RESULTS}"
    for store, cell_id, text in rows:
        stored = json.loads(text)
        spec = CellSpec.from_dict(stored)
        assert _covers(spec.to_dict(), stored), f"{store} {cell_id}: the spec does not read back"
