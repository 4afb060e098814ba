"""A tiny suite from file to store to plot, through the real CLI and worker processes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from attn_zoo.cli import main
from attn_zoo.grid import Store, load_suite

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "suites" / "tiny.toml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    code = main(["run", str(TINY), "--out", str(out), "--no-progress"])
    return code, out


def test_tiny_suite_writes_store_rows_and_plot(tiny_run):
    code, out = tiny_run
    assert code == 0
    store = Store(out / "tiny.sqlite")
    assert store.integrity_check() == "ok"
    frame = store.frame()
    assert sorted(frame["label"]) == ["global", "swin"]
    for column in ("params", "macs", "flops", "attention_macs", "latency_median_ms", "val_top1", "budget_target"):
        assert frame[column].notna().all(), column
    assert (frame["flops"] == 2 * frame["macs"]).all()
    assert (frame["budget_target"] == 200000).all()
    # training efficiency: 6 x MACs x images / training time, against the measured matmul peak
    assert ((frame["train_gflops_achieved"] > 0) & (frame["train_peak_fraction"] > 0)).all()
    ratio = frame["train_gflops_achieved"] / frame["matmul_peak_gflops"]
    assert (abs(ratio - frame["train_peak_fraction"]) < 1e-9).all()
    cells = store.cells()
    assert all(c["environment"]["torch"] and c["environment"]["threads"] == 1 for c in cells)
    assert all(c["backends"] for c in cells)
    png = out / "tiny" / "bars_test_top1.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "tiny" / "accuracy_vs_params.png").exists()  # one matched budget: no Pareto front


def test_rerun_skips_finished_cells(tiny_run, capsys):
    _, out = tiny_run
    before = sqlite3.connect(out / "tiny.sqlite").execute("SELECT cell_id, finished_at FROM cells").fetchall()
    assert main(["run", str(TINY), "--out", str(out), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ran"] == 0 and summary["skipped"] == 2
    after = sqlite3.connect(out / "tiny.sqlite").execute("SELECT cell_id, finished_at FROM cells").fetchall()
    assert before == after


def test_results_and_report_commands(tiny_run, capsys, tmp_path):
    _, out = tiny_run
    assert main(["results", str(out / "tiny.sqlite"), "--csv", str(tmp_path / "rows.csv")]) == 0
    assert "swin" in capsys.readouterr().out
    assert (tmp_path / "rows.csv").read_text().count("\n") == 3
    assert main(["report", str(out / "tiny.sqlite"), "--markdown", "--out", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    assert "| global" in text and (tmp_path / "plots" / "bars_test_top1.png").is_file()
    assert "Paired differences in test_top1:" in text


def test_suite_cells_are_keyed_by_resolved_config(tmp_path):
    suite = load_suite(TINY)
    assert len(suite.cells) == 2 and len({c.cell_id for c in suite.cells}) == 2
    changed = load_suite(TINY, {"train.steps": 5})
    assert {c.cell_id for c in changed.cells}.isdisjoint({c.cell_id for c in suite.cells})
    copy = tmp_path / "tiny.toml"
    shutil.copy(TINY, copy)
    assert [c.cell_id for c in load_suite(copy).cells] == [c.cell_id for c in suite.cells]
