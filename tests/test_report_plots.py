"""Figures from a store: which ones a grid supports, that each is a real image, and the numbers behind them
(Pareto front, fitted exponents, confidence intervals). How they look was checked by eye (docs/suites.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _grid_fakes import erf_runner, write_suite
from matplotlib import image as mpimg

from attn_zoo.grid import InlineExecutor, Store, load_suite, run_suite
from attn_zoo.report.figures import make_figures
from attn_zoo.report.plots import pareto_front
from attn_zoo.report.scaling import fit_exponents_local
from attn_zoo.report.stats import mean_ci
from attn_zoo.report.tables import aggregate, summary_rows


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots")
    suite = write_suite(tmp, seeds=2, extra='"knobs.window" = [2, 4]\n"model.img_size" = [32, 64]')
    path = tmp / "out" / "fake.sqlite"
    run_suite(load_suite(suite), path, executor=InlineExecutor(erf_runner), progress=False)
    return Store(path)


def test_a_grid_gets_every_figure_it_supports(store, tmp_path):
    figures = make_figures(store.frame(), tmp_path / "figs", store.path.parent)
    names = sorted(f.path.name for f in figures)
    assert names == sorted(
        [
            "accuracy_vs_macs.png",
            "accuracy_vs_latency.png",
            "accuracy_vs_params.png",
            "scaling_latency_median_ms.png",
            "scaling_peak_mem_fwd_mb.png",
            "scaling_macs.png",
            "heatmap_swin_factor_model_img_size_knob_window.png",
            "bars_val_top1.png",
            "bars_latency_median_ms.png",
            "erf_untrained_maps.png",
        ]
    )
    for fig in figures:
        pixels = mpimg.imread(fig.path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 300, fig.path  # a real, paper-sized image
        assert pixels[..., :3].std() > 0.05, fig.path  # not blank
        assert fig.title and fig.caption


def test_figures_need_the_data_they_show(store, tmp_path):
    one = store.frame()
    one = one[(one["label"] == "swin") & (one["img_size"] == 32) & (one["knob.window"] == 2)]
    assert make_figures(one, tmp_path / "one", None) == []  # one configuration: nothing to compare
    no_accuracy = store.frame().drop(columns=["val_top1"])
    names = {f.path.name for f in make_figures(no_accuracy, tmp_path / "lat", None)}
    assert not any(n.startswith("accuracy_vs") for n in names) and "scaling_latency_median_ms.png" in names


def test_pareto_front_keeps_exactly_the_undominated_points():
    x = np.array([1.0, 2.0, 3.0, 2.5, 4.0, 1.5])
    y = np.array([70.0, 75.0, 74.0, 76.0, 80.0, 69.0])
    assert pareto_front(x, y).tolist() == [0, 1, 3, 4]  # (1.5, 69) and (3, 74) are dominated


def test_fitted_exponent_of_a_power_law():
    sizes = np.array([32, 64, 128, 256])
    frame = pd.DataFrame(
        {
            "label": ["global"] * 4 + ["swin"] * 4,
            "img_size": np.concatenate([sizes, sizes]),
            "latency_median_ms": np.concatenate([3e-6 * (sizes**2) ** 2, 2e-3 * sizes**2]),
        }
    )
    fits = fit_exponents_local(frame, ["latency_median_ms"]).set_index("label")
    assert fits.loc["global", "exponent"] == pytest.approx(2.0)
    assert fits.loc["swin", "exponent"] == pytest.approx(1.0)
    assert fits.loc["swin", "r2"] == pytest.approx(1.0)


def test_confidence_intervals_and_the_summary_table(store):
    frame = store.frame()
    agg = aggregate(frame, ["val_top1"])
    row = agg[(agg["label"] == "swin") & (agg["variant"] == "window=2, img_size=32")].iloc[0]
    seeds = frame[(frame["config_id"] == row["config_id"])]["val_top1"]
    mean, std, ci, n = mean_ci(seeds)
    assert n == 2 and row["val_top1_mean"] == pytest.approx(mean) and row["val_top1_ci95"] == pytest.approx(ci)
    assert ci == pytest.approx(12.7062 * std / np.sqrt(2), rel=1e-5)  # t(0.975, 1 dof) from a printed table
    headers, rows = summary_rows(frame)
    assert headers[:3] == ["mechanism", "variant", "seeds"] and len(rows) == 2 + 4
    assert any(r[:2] == ["swin", "window=2, img_size=32"] and " ± " in r[-1] for r in rows)


def test_the_reported_accuracy_is_the_test_split_when_a_store_has_one(store):
    from attn_zoo.report.style import accuracy_metric

    frame = store.frame()  # the fake cells record val_top1 only
    assert accuracy_metric(frame) == "val_top1"
    headers, _ = summary_rows(frame)
    assert "val top-1 (%)" in headers and "top-1 (%)" not in headers
    with_test = frame.assign(test_top1=frame["val_top1"] - 1.0)
    assert accuracy_metric(with_test) == "test_top1"
    headers, rows = summary_rows(with_test)
    column = headers.index("top-1 (%)")
    agg = aggregate(with_test, ["test_top1"])  # the table's rows, in the same order
    assert [row[column].split(" ")[0] for row in rows] == [f"{v:.2f}" for v in agg["test_top1_mean"]]


def test_accuracy_vs_resolution_curve_and_table(store, tmp_path):
    from attn_zoo.report.plots import resolution_columns

    frame = store.frame()
    frame = frame.assign(**{"test_top1": frame["val_top1"], "test_top1@24": frame["val_top1"] - 5.0})
    frame["test_top1@48"] = frame["val_top1"] - 9.0
    assert resolution_columns(frame) == {24: "test_top1@24", 48: "test_top1@48"}
    figures = {f.path.name: f for f in make_figures(frame, tmp_path)}
    assert "test_top1_vs_resolution.png" in figures
    assert mpimg.imread(figures["test_top1_vs_resolution.png"].path).shape[-1] in (3, 4)
    columns = [(col, f"@{res}", 1, "{:.2f}") for res, col in resolution_columns(frame).items()]
    headers, rows = summary_rows(frame, columns)
    agg = aggregate(frame, ["test_top1@48"])
    assert headers[-2:] == ["@24", "@48"]
    assert [r[-1].split(" ")[0] for r in rows] == [f"{v:.2f}" for v in agg["test_top1@48_mean"]]
