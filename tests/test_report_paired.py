"""Paired statistics against hand-computed values and SciPy, and `attn-zoo report --markdown` on a store
whose per-seed numbers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _grid_fakes import write_suite
from scipy import stats

from attn_zoo.cli import main
from attn_zoo.grid import InlineExecutor, load_suite, run_suite
from attn_zoo.grid.store import Store
from attn_zoo.report.paired import (
    bootstrap_interval,
    bootstrap_test_set,
    holm,
    letter_groups,
    mcnemar,
    min_detectable_difference,
    paired_t,
    paired_tables,
    power_paired_t,
    seeds_needed,
)
from attn_zoo.train.pairing import save_predictions


def test_paired_t_by_hand_and_as_scipy_ttest_rel():
    a, b = np.array([71.0, 73.0, 75.0, 77.0]), np.array([70.0, 71.0, 72.0, 73.0])  # d = 1, 2, 3, 4
    t = paired_t(a - b)
    sd = math.sqrt(5 / 3)  # sum of squared deviations 5, n - 1 = 3
    half = 3.182446305284263 * sd / 2  # t(0.975, 3) * sd / sqrt(4)
    assert (t.mean, t.sd, t.n) == (2.5, pytest.approx(sd), 4)
    assert (t.low, t.high) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    assert t.p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert t.p == pytest.approx(0.030466, abs=1e-5)  # t = 2.5 / (sd / 2) = 3.873 with 3 dof
    assert math.isnan(paired_t([1.0]).low) and paired_t([]).n == 0


def test_holm_step_down_by_hand():
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])  # 3p, max(2p, .), max(p, .)
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]
    out = holm([0.02, math.nan, 0.01])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_power_and_minimum_detectable_difference():
    # G*Power's classic: a paired t-test (two-sided, 5%) needs 10 pairs for dz = 1 at 80% power
    assert seeds_needed(1.0, 1.0) == 10
    assert power_paired_t(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-3)
    assert power_paired_t(1.0, 1.0, 9) < 0.8
    mdd = min_detectable_difference(2.0, 5)
    assert power_paired_t(mdd, 2.0, 5) == pytest.approx(0.8, abs=1e-6)
    assert mdd == pytest.approx(2 * min_detectable_difference(1.0, 5))  # scales with the spread
    # many seeds: the normal approximation (z_0.975 + z_0.8) sd / sqrt(n)
    assert min_detectable_difference(1.0, 2000) == pytest.approx(2.8016 / math.sqrt(2000), rel=2e-3)
    assert seeds_needed(0.5, 0.0) == 2 and min_detectable_difference(0.0, 5) == 0.0


def test_mcnemar_exact_by_hand():
    a = np.array([1, 1, 1, 0, 0, 1], dtype=bool)
    b = np.array([0, 0, 0, 0, 1, 1], dtype=bool)
    only_a, only_b, p = mcnemar(a, b)
    assert (only_a, only_b) == (3, 1)
    assert p == pytest.approx(2 * 5 / 16)  # two-sided binomial, P(X >= 3 | 4, 1/2) = 5/16
    assert mcnemar(a, a) == (0, 0, 1.0)


def test_test_set_and_seed_bootstraps():
    rng = np.random.default_rng(1)
    a = rng.random((3, 4000)) < 0.75
    b = rng.random((3, 4000)) < 0.70
    diff, low, high = bootstrap_test_set(a, b)
    assert diff == pytest.approx(100 * (a.mean() - b.mean()))
    se = 100 * math.sqrt((a.mean(0) - b.mean(0)).var() / 4000)  # normal approximation
    assert low < diff < high and (high - low) / 2 == pytest.approx(1.96 * se, rel=0.1)
    assert bootstrap_test_set(a, a) == (0.0, 0.0, 0.0)
    d = [0.5, 1.5, -0.2, 2.0, 1.1]
    low, high = bootstrap_interval(d)
    assert min(d) <= low < np.mean(d) < high <= max(d)
    assert bootstrap_interval(d) == (low, high)  # seeded
    assert bootstrap_interval([1.0, 1.0]) == (1.0, 1.0)


def test_letter_groups_compact_display():
    separated = {("A", "C"), ("A", "D"), ("B", "D")}
    letters = letter_groups(list("ABCD"), lambda x, y: (x, y) in separated or (y, x) in separated)
    assert letters == {"A": "a", "B": "ab", "C": "bc", "D": "c"}
    assert letter_groups(list("ABC"), lambda x, y: False) == {"A": "a", "B": "a", "C": "a"}


# per-seed accuracies: swin is the baseline; ssa is 3 points above it on every seed (+- 0.1), global 0.2
# above with a spread of 1 point; seeds share a large common offset that pairing removes
OFFSET = [0.0, 6.0, -4.0, 2.0, -3.0]
ACC = {
    "swin": [70.0 + o for o in OFFSET],
    "ssa": [73.0 + o + e for o, e in zip(OFFSET, [0.1, -0.1, 0.0, 0.1, -0.1])],
    "global": [70.2 + o + e for o, e in zip(OFFSET, [1.0, -1.0, 0.5, -0.5, 0.0])],
}


def runner(cell, artifact_dir):
    label, seed = cell.spec.label, cell.spec.seed
    target = np.arange(200) % 10
    pred = target.copy()
    pred[: 20 + 10 * list(ACC).index(label)] = 0  # a few wrong answers, different per mechanism
    path = save_predictions(artifact_dir / "test_predictions.npz", pred, target)
    metrics = {"test_top1": ACC[label][seed], "budget_target": 2e7, "budget_tolerance": 0.02}
    metrics["budget_achieved"] = metrics["macs"] = 2e7 * (1 + 0.001 * seed)
    return {"status": "ok", "metrics": metrics, "artifacts": {"test_predictions": str(path)}}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paired")
    suite = write_suite(
        tmp, name="paired", seeds=5, mechanisms=("global", "swin", "ssa"), extra='\n[report]\nbaseline = "swin"\n'
    )
    path = tmp / "out" / "paired.sqlite"
    run_suite(load_suite(suite), path, executor=InlineExecutor(runner), progress=False)
    return path


def test_store_table_pairs_by_seed(store_path):
    store = Store(store_path, readonly=True)
    (table,) = paired_tables(store.frame(), "swin", store_dir=store_path.parent)
    rows = {r.label: r for r in table.rows}
    assert [r.label for r in table.rows] == ["ssa", "global", "swin"]  # ranked by mean
    d = np.array(ACC["ssa"]) - np.array(ACC["swin"])
    assert rows["ssa"].diff.mean == pytest.approx(d.mean())
    assert rows["ssa"].diff.p == pytest.approx(stats.ttest_rel(ACC["ssa"], ACC["swin"]).pvalue)
    p_global = stats.ttest_rel(ACC["global"], ACC["swin"]).pvalue
    assert rows["ssa"].p_holm == pytest.approx(2 * rows["ssa"].diff.p)  # smallest of two: x2
    assert rows["global"].p_holm == pytest.approx(max(p_global, 2 * rows["ssa"].diff.p))
    # unpaired, the 5-point seed spread would hide the 3-point difference; paired, it is resolved
    assert stats.ttest_ind(ACC["ssa"], ACC["swin"]).pvalue > 0.05
    assert ("ssa", "swin") in table.resolved() and ("ssa", "global") in table.resolved()
    assert rows["ssa"].group == "a" and rows["global"].group == "b" and rows["swin"].group == "b"
    sd = math.sqrt((np.var(d, ddof=1) + np.var(np.array(ACC["global"]) - ACC["swin"], ddof=1)) / 2)
    assert table.pooled_sd == pytest.approx(sd) and table.seeds == 5
    assert table.mdd == pytest.approx(min_detectable_difference(sd, 5))
    assert table.equal_budget and table.budget == "MACs within ±2% of 20M (achieved 20.00-20.08M)"
    # test set (the fake predictions): swin answers 0 for the first 20 examples (18 wrong, two are class 0),
    # ssa for the first 30 (27 wrong): -4.5 points on every seed, 9 discordant examples, McNemar p = 2/2^9
    assert rows["ssa"].testset[0] == pytest.approx(-4.5) and rows["ssa"].mcnemar == (5, 5)


def test_report_markdown_prints_the_paired_table(store_path, capsys):
    assert main(["report", str(store_path), "--markdown", "--seeds-for", "1", "--out", str(store_path.parent)]) == 0
    out = capsys.readouterr().out
    assert "| mechanism | group | seeds | top-1 (%)" in out and "Δ vs swin" in out
    d = np.array(ACC["ssa"]) - np.array(ACC["swin"])
    t = paired_t(d)
    assert f"| ssa       | a     | 5     | 73.20 ± 4.99 | +{t.mean:.2f}     | [+{t.low:.2f}, +{t.high:.2f}]    |" in out
    assert "| swin      | b     | 5     | 70.20 ± 5.00 | baseline  |" in out
    assert "Resolved (Holm-corrected paired t, p < 0.05): global > swin" not in out
    assert "ssa > global, ssa > swin" in out
    assert "Sizing: a true difference of 1 points needs" in out
    assert (store_path.parent / "forest_test_top1.png").exists()
    assert not (store_path.parent / "accuracy_vs_macs.png").exists()  # one budget: no Pareto over noise


def test_report_rejects_an_unknown_baseline(store_path, capsys):
    assert main(["report", str(store_path), "--baseline", "nope"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["attn-zoo: error: baseline 'nope' is not a mechanism of this store; allowed: global, swin, ssa"]


def sweep_runner(cell, artifact_dir):
    label, seed, target = cell.spec.label, cell.spec.seed, cell.spec.budget.target
    acc = ACC[label][seed] + 2.0 * math.log2(target / 5e6)
    metrics = {"test_top1": acc, "budget_target": target, "budget_tolerance": 0.02}
    metrics["budget_achieved"] = metrics["macs"] = target * (1 + 0.001 * seed)
    return {"status": "ok", "metrics": metrics}


def test_budget_sweep_draws_curves_a_forest_per_budget_and_the_pareto_front(tmp_path, capsys):
    suite = write_suite(
        tmp_path, name="sweep", seeds=3, mechanisms=("global", "swin", "ssa"), extra='"budget.target" = [5e6, 2e7]'
    )
    path = tmp_path / "out" / "sweep.sqlite"
    run_suite(load_suite(suite), path, executor=InlineExecutor(sweep_runner), progress=False)
    out = tmp_path / "figs"
    assert main(["report", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Paired differences in test_top1 (target=5e+06):" in text
    assert "Paired differences in test_top1 (target=2e+07):" in text
    names = sorted(p.name for p in out.glob("*.png"))
    assert "test_top1_vs_budget.png" in names and "accuracy_vs_macs.png" in names  # budgets really differ
    assert {"forest_test_top1_target_5e_06.png", "forest_test_top1_target_2e_07.png"} <= set(names)


def test_accuracy_vs_latency_uses_only_converged_timings(tmp_path):
    from attn_zoo.report.figures import make_figures

    def timed_runner(cell, artifact_dir):
        label, seed = cell.spec.label, cell.spec.seed
        metrics = {"test_top1": ACC[label][seed], "latency_median_ms": 1.0 + seed + (label == "swin")}
        metrics["latency_fwd_converged"] = float(seed < 2)
        return {"status": "ok", "metrics": metrics}

    suite = write_suite(tmp_path, name="timed", seeds=3, mechanisms=("global", "swin"))
    path = tmp_path / "out" / "timed.sqlite"
    run_suite(load_suite(suite), path, executor=InlineExecutor(timed_runner), progress=False)
    figures = make_figures(Store(path, readonly=True).frame(), tmp_path / "figs", path.parent)
    (latency,) = [f for f in figures if f.path.name == "accuracy_vs_latency.png"]
    assert "Only cells whose latency converged to its CI target (4 of 6)." in latency.caption
    assert not any(f.path.name == "accuracy_vs_macs.png" for f in figures)  # one budget


def test_only_seeds_every_mechanism_finished_count(store_path):
    frame = Store(store_path, readonly=True).frame()
    partial = frame[~((frame["label"] == "ssa") & (frame["seed"] == 4))]  # ssa's seed 4 missing
    (table,) = paired_tables(partial, "swin", store_dir=store_path.parent)
    rows = {r.label: r for r in table.rows}
    assert table.seeds == 4 and all(r.n == 4 for r in table.rows)
    assert rows["swin"].mean == pytest.approx(np.mean(ACC["swin"][:4]))


def test_a_suite_without_a_budget_states_none():
    import pandas as pd

    from attn_zoo.report.paired import budget_statement

    group = pd.DataFrame({"budget_target": [0.0, 0.0], "budget_achieved": [0.0, 0.0], "budget_tolerance": [0.0, 0.0]})
    assert budget_statement(group) == ("no budget matching", False)
