"""Provenance: a finished cell whose code changed is re-run (and only that cell), with one line per reason;
--keep-stale keeps it; fingerprints hash file contents only; a store that mixes code versions says so and
never aggregates across them. Cells run in-process with fake results."""

from __future__ import annotations

import shutil
import textwrap

import pytest
from _grid_fakes import fake_runner, write_suite

from attn_zoo.cli import main
from attn_zoo.grid import Store, load_suite, provenance, run_suite
from attn_zoo.registry import isolated_registry, load_plugin_file
from attn_zoo.report.tables import summary_rows

PLUGIN = '''
from attn_zoo import register_mechanism
from attn_zoo.mechanisms.base import Mixer


@register_mechanism("scale_prov")
class Scale(Mixer):
    """Multiplies the tokens by a constant (a test plugin)."""

    def __init__(self, dim: int, num_heads: int, *, feat_size=None):
        super().__init__(dim, num_heads, feat_size=feat_size)

    def forward(self, x, context=None):
        return x * {gain}

    def attention_macs(self, height, width):
        return 0
'''


def _run(suite, path, **kwargs):
    ran = []
    run_suite(suite, path, runner=lambda c: ran.append(c.label) or fake_runner(c), progress=False, **kwargs)
    return sorted(ran)


def test_editing_a_plugins_forward_reruns_that_cell_only(tmp_path, capsys):
    plugin = tmp_path / "scale_prov.py"
    plugin.write_text(textwrap.dedent(PLUGIN.format(gain=2.0)))
    with isolated_registry():
        load_plugin_file(plugin)
        suite = load_suite(write_suite(tmp_path, seeds=1, mechanisms=("global", "scale_prov")), plugins=(plugin,))
        store = tmp_path / "out" / "fake.sqlite"
        assert _run(suite, store) == ["global", "scale_prov"]
        assert _run(suite, store) == []  # nothing changed: nothing re-runs
        capsys.readouterr()
        plugin.write_text(textwrap.dedent(PLUGIN.format(gain=3.0)))  # the plugin's forward changes
        assert _run(suite, store) == ["scale_prov"]
        assert capsys.readouterr().err.splitlines() == ["1 cell re-run: code of scale_prov changed"]
        assert _run(suite, store) == []
        plugin.write_text(textwrap.dedent(PLUGIN.format(gain=4.0)))
        assert _run(suite, store, keep_stale=True) == []  # an explicit choice keeps the old row
        assert "1 cell kept although computed by other code (--keep-stale): code of scale_prov changed" in (
            capsys.readouterr().err
        )


def test_a_builtin_mechanisms_change_reruns_only_its_cells(tmp_path, monkeypatch, capsys):
    suite = load_suite(write_suite(tmp_path, seeds=2, mechanisms=("global", "swin")))
    store = tmp_path / "out" / "fake.sqlite"
    assert _run(suite, store) == ["global", "global", "swin", "swin"]
    original = provenance.module_source
    monkeypatch.setattr(
        provenance,
        "module_source",
        lambda name: original(name) + (b"\n# edited\n" if name == "attn_zoo.mechanisms.swin" else b""),
    )
    capsys.readouterr()
    assert _run(suite, store) == ["swin", "swin"]
    assert capsys.readouterr().err.splitlines() == ["2 cells re-run: code of swin changed"]
    codes = {row["label"]: row["code"] for row in Store(store).cells()}
    assert codes["swin"]["mechanisms"]["swin"] != codes["global"]["mechanisms"].get("swin")
    assert codes["swin"]["harness"] == codes["global"]["harness"]


def test_a_harness_change_reruns_every_cell(tmp_path, monkeypatch, capsys):
    suite = load_suite(write_suite(tmp_path, seeds=1, mechanisms=("global", "swin")))
    store = tmp_path / "out" / "fake.sqlite"
    _run(suite, store)
    monkeypatch.setattr(provenance, "harness_fingerprint", lambda: "0" * 64)
    capsys.readouterr()
    assert _run(suite, store) == ["global", "swin"]
    assert capsys.readouterr().err.splitlines() == ["2 cells re-run: code of the harness changed"]


def test_fingerprints_hash_contents_not_paths(tmp_path, monkeypatch):
    """Another checkout of the same files (another directory, fresh mtimes) gives the same fingerprint."""
    msda = provenance.cell_code({"mechanism": "msda"})
    swin = provenance.cell_code({"mechanism": "swin"})
    assert set(msda["mechanisms"]) == {"msda"} and set(swin["mechanisms"]) == {"swin"}
    assert provenance.cell_code({"mechanism": "swin"}) == swin  # deterministic
    before = provenance.harness_fingerprint()
    original = provenance.PACKAGE_ROOT
    copy = tmp_path / "elsewhere" / "attn_zoo"
    shutil.copytree(original, copy, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        monkeypatch.setattr(provenance, "PACKAGE_ROOT", copy)
        provenance.harness_fingerprint.cache_clear()
        assert provenance.harness_fingerprint() == before
        (copy / "train" / "recipe.py").write_text((copy / "train" / "recipe.py").read_text() + "\n# edited\n")
        provenance.harness_fingerprint.cache_clear()
        assert provenance.harness_fingerprint() != before
    finally:  # leave the cache holding this checkout's fingerprint, not the copy's
        monkeypatch.setattr(provenance, "PACKAGE_ROOT", original)
        provenance.harness_fingerprint.cache_clear()
    assert provenance.harness_fingerprint() == before


def test_a_store_mixing_code_versions_says_so_and_never_aggregates_across(tmp_path, monkeypatch, capsys):
    one = load_suite(write_suite(tmp_path, seeds=1, mechanisms=("global", "swin")))
    store = tmp_path / "out" / "fake.sqlite"
    _run(one, store)
    original = provenance.module_source
    monkeypatch.setattr(
        provenance,
        "module_source",
        lambda name: original(name) + (b"\n# edited\n" if name == "attn_zoo.mechanisms.swin" else b""),
    )
    two = load_suite(write_suite(tmp_path, seeds=2, mechanisms=("global", "swin")))
    assert _run(two, store, keep_stale=True) == ["global", "swin"]  # seed 1 only: seed 0 of swin is kept
    frame = Store(store).frame()
    headers, rows = summary_rows(frame)
    assert "code" in headers
    swin_rows = [r for r in rows if r[0] == "swin"]
    assert len(swin_rows) == 2 and [r[headers.index("seeds")] for r in swin_rows] == ["1", "1"]
    assert [r[headers.index("seeds")] for r in rows if r[0] == "global"] == ["2"]
    capsys.readouterr()
    for argv in (["results", str(store)], ["report", str(store), "--out", str(tmp_path / "rep")]):
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert "the store mixes code versions (swin: 2 versions)" in err, err


@pytest.mark.parametrize("status", ["ok", "oom"])
def test_rows_record_their_code_and_environment(tmp_path, status):
    suite = load_suite(write_suite(tmp_path, seeds=1, mechanisms=("global",)))
    store = tmp_path / "out" / "fake.sqlite"
    result = {"status": status, "reason": None if status == "ok" else "x", "metrics": {"val_top1": 1.0}}
    run_suite(suite, store, runner=lambda c: result, progress=False)
    (row,) = Store(store).cells()
    assert row["code"] == provenance.cell_code(suite.cells[0].spec)
    assert row["code_fp"] == provenance.code_id(row["code"])
