"""The example plugin (examples/attn-zoo-axial, installed by scripts/setup.sh) beside the built-in mechanisms:
it passes the conformance kit, and a tiny suite with axial, global and swin ends in a store row per mechanism
and a plot. Without the package installed, the test loads its module as a plugin file."""

from __future__ import annotations

from pathlib import Path

import pytest

import attn_zoo
from attn_zoo.cli import main
from attn_zoo.grid import Store
from attn_zoo.registry import isolated_registry, load_plugin_file
from attn_zoo.testing import check_mechanism

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "attn-zoo-axial"
MODULE = EXAMPLE / "attn_zoo_axial" / "mechanism.py"
INSTALLED = "axial" in attn_zoo.list_mechanisms()


@pytest.fixture
def axial():
    with isolated_registry():
        if not INSTALLED:
            load_plugin_file(MODULE)
        yield attn_zoo.list_mechanisms()["axial"]


def test_example_is_registered_and_conforms(axial):
    assert axial.source.startswith("plugin attn-zoo-axial" if INSTALLED else "file ")
    assert axial.knobs["axis"].choices == ("row", "column")
    report = check_mechanism("axial")
    assert report.ok, str(report)


@pytest.mark.slow
def test_example_suite_beside_builtins_ends_in_rows_and_a_plot(axial, tmp_path, capsys):
    plugin = [] if INSTALLED else ["--plugin", str(MODULE)]
    # the suite's own budget matching (equal parameters) is left out to keep this test short
    fast = ["--set", 'budget.metric="none"', "--set", "train.steps=2", "--set", "data.train_size=64"]
    fast += ["--set", "data.val_size=32"]
    argv = [*plugin, "run", str(EXAMPLE / "compare.toml"), "--out", str(tmp_path), "--no-progress", *fast]
    assert main(argv) == 0, capsys.readouterr().err
    store = Store(tmp_path / "axial_vs_baselines.sqlite")
    frame = store.frame()
    assert sorted(frame["label"]) == ["axial", "global", "swin"]
    for column in ("params", "macs", "attention_macs", "latency_median_ms", "val_top1"):
        assert frame[column].notna().all(), column
    row = frame.set_index("label").loc["axial"]
    assert row["attention_macs"] < frame.set_index("label").loc["global", "attention_macs"]  # rows, not all pairs
    png = tmp_path / "axial_vs_baselines" / "accuracy_vs_macs.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["report", str(tmp_path / "axial_vs_baselines.sqlite"), "--markdown"]) == 0
    table = capsys.readouterr().out
    assert all(f"| {name}" in table for name in ("axial", "global", "swin"))
