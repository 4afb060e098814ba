"""`attn-zoo compare BASELINE CURRENT`: the regression check lists exactly the configurations whose latency
or accuracy moved beyond the thresholds (latency beyond its measured spread too) and exits 1 for them."""

from __future__ import annotations

import json

import pytest
from _grid_fakes import fake_runner, write_suite

from attn_zoo.cli import main
from attn_zoo.grid import load_suite, run_suite


def store_with(tmp_path, name, change):
    suite = load_suite(write_suite(tmp_path, seeds=2, extra='"knobs.window" = [2, 4, 8]'))

    def run(cell):
        result = fake_runner(cell)
        change(cell, result)
        return result

    path = tmp_path / name / "fake.sqlite"
    run_suite(suite, path, runner=run, progress=False)
    return path


def window(cell):
    return cell.spec.knobs.get("window")


def moved(cell, result):
    m = result["metrics"]
    if cell.label == "swin" and window(cell) == 2:
        m["latency_median_ms"] *= 1.30  # slower, with the usual small spread: a regression
    if cell.label == "swin" and window(cell) == 4:
        m["latency_median_ms"] *= 1.05  # inside the 10% threshold
    if cell.label == "swin" and window(cell) == 8:
        m["latency_median_ms"] *= 1.30  # as much slower, but the timings were noisy: within the spread
        m["latency_iqr_ms"] = m["latency_median_ms"]
    if cell.label == "global":
        m["val_top1"] -= 2.0  # two points less accurate


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    return store_with(tmp, "base", lambda c, r: None), store_with(tmp, "cur", moved)


def test_moves_beyond_the_thresholds_are_listed_and_fail(stores, capsys):
    base, cur = stores
    assert main(["compare", str(base), str(cur), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    found = {(c["label"], c["variant"], c["metric"], c["kind"]) for c in report["changes"]}
    assert found == {
        ("swin", "window=2", "latency_median_ms", "regression"),
        ("global", "", "val_top1", "regression"),
    }
    swin = next(c for c in report["changes"] if c["label"] == "swin")
    assert swin["relative"] == pytest.approx(0.30, rel=1e-6)
    glob = next(c for c in report["changes"] if c["label"] == "global")
    assert glob["delta"] == pytest.approx(-2.0)
    assert report["matched"] == 4 and report["only_baseline"] == report["only_current"] == 0


def test_thresholds_decide(stores, capsys):
    base, cur = stores
    assert main(["compare", str(base), str(cur), "--latency-threshold", "0.5", "--accuracy-threshold", "3"]) == 0
    assert "nothing moved beyond 50% latency / 3 points accuracy" in capsys.readouterr().out
    assert main(["compare", str(base), str(cur), "--latency-threshold", "0.02", "--json"]) == 1
    kinds = {(c["variant"], c["metric"]) for c in json.loads(capsys.readouterr().out)["changes"]}
    assert ("window=4", "latency_median_ms") in kinds and ("window=8", "latency_median_ms") not in kinds


def test_same_store_and_improvements(stores, capsys):
    base, cur = stores
    assert main(["compare", str(base), str(base)]) == 0
    capsys.readouterr()
    # the reverse direction is an improvement: fails by default, passes with --fail-on regression
    assert main(["compare", str(cur), str(base), "--json"]) == 1
    assert {c["kind"] for c in json.loads(capsys.readouterr().out)["changes"]} == {"improvement"}
    assert main(["compare", str(cur), str(base), "--fail-on", "regression"]) == 0
    capsys.readouterr()


def test_a_configuration_that_no_longer_finishes_is_lost(tmp_path, stores, capsys):
    base, _ = stores

    def broken(cell, result):
        if cell.label == "global":
            result["status"] = "failed"

    cur = store_with(tmp_path, "broken", broken)
    assert main(["compare", str(base), str(cur)]) == 1
    text = capsys.readouterr().out
    assert "lost" in text and "global" in text and "1 only in the baseline" in text
