"""Speed is a property of the configuration: reports pool the timed calls of every seed and give their median
with the order-statistic 95% interval of the median (never a Student-t interval across seeds), and mark a
timing that did not converge in tables and on the HTML page."""

from __future__ import annotations

import pandas as pd
from _grid_fakes import fake_metrics, write_suite

from attn_zoo.grid import Store, load_suite, run_suite
from attn_zoo.report.html import write_html_report
from attn_zoo.report.tables import NOT_CONVERGED, NOT_CONVERGED_NOTE, pooled_latency, summary_rows


def _rows(times: list[list[float]], converged: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "config_id": "c",
            "label": "swin",
            "variant": "",
            "seed": list(range(len(times))),
            "latency_median_ms": [float(pd.Series(t).median()) for t in times],
            "latency_fwd_times_ms": times,
            "latency_fwd_converged": converged,
            "throughput_img_s": [1e3 / float(pd.Series(t).median()) for t in times],
        }
    )


def test_the_timed_calls_of_all_seeds_are_pooled():
    """100 calls over two seeds: the median is 50.5 and its 95% interval the 40th and 61st smallest."""
    frame = _rows([[float(x) for x in range(1, 101, 2)], [float(x) for x in range(2, 101, 2)]], [1.0, 1.0])
    lat = pooled_latency(frame, "latency_median_ms")
    assert (lat["median"], lat["low"], lat["high"], lat["calls"], lat["converged"]) == (50.5, 40.0, 61.0, 100.0, 1.0)
    headers, rows = summary_rows(frame)
    # a Student-t interval over the two seeds' medians (50 and 51) would be 50.50 ± 6.35
    assert rows[0][headers.index("latency (ms)")] == "50.50 ± 10.50"
    assert rows[0][headers.index("img/s")] == f"{1e3 / 50.5:.1f} ± {(1e3 / 40 - 1e3 / 61) / 2:.1f}"


def test_an_unconverged_timing_is_marked():
    frame = _rows([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]], [1.0, 0.0])
    headers, rows = summary_rows(frame)
    assert rows[0][headers.index("latency (ms)")].endswith(NOT_CONVERGED)


def test_stores_without_timed_calls_fall_back_to_the_rows_own_intervals():
    one = pd.DataFrame(
        {
            "config_id": ["c"],
            "label": ["swin"],
            "latency_median_ms": [10.0],
            "latency_fwd_ci_low_ms": [9.0],
            "latency_fwd_ci_high_ms": [12.0],
        }
    )
    assert pooled_latency(one, "latency_median_ms") == {
        "median": 10.0,
        "low": 9.0,
        "high": 12.0,
        "calls": 0.0,
        "converged": pooled_latency(one, "latency_median_ms")["converged"],
    }
    two = pd.concat([one, one.assign(latency_median_ms=14.0, latency_fwd_ci_low_ms=13.0, latency_fwd_ci_high_ms=15.0)])
    lat = pooled_latency(two, "latency_median_ms")
    assert (lat["median"], lat["low"], lat["high"]) == (12.0, 9.0, 15.0)


def test_stored_timed_calls_reach_the_table_and_the_html_page(tmp_path):
    suite = load_suite(write_suite(tmp_path, seeds=2, mechanisms=("global", "swin")))

    def runner(cell):
        metrics = fake_metrics(cell.spec)
        base = metrics["latency_median_ms"]
        metrics["latency_fwd_times_ms"] = [base + 0.01 * i for i in range(20)]
        metrics["latency_fwd_converged"] = 0.0 if cell.label == "swin" and cell.seed == 1 else 1.0
        return {"status": "ok", "metrics": metrics}

    path = tmp_path / "out" / "fake.sqlite"
    run_suite(suite, path, runner=runner, progress=False)
    store = Store(path, readonly=True)
    (row,) = [r for r in store.cells() if r["label"] == "global" and r["seed"] == 0]
    assert len(row["samples"]["latency_fwd_times_ms"]) == 20 and "latency_fwd_times_ms" not in row["metrics"]
    frame = store.frame(samples=True)
    headers, rows = summary_rows(frame)
    by_label = {r[0]: r[headers.index("latency (ms)")] for r in rows}
    assert by_label["swin"].endswith(NOT_CONVERGED) and not by_label["global"].endswith(NOT_CONVERGED)
    page = write_html_report(store, tmp_path / "report.html", []).read_text()
    assert NOT_CONVERGED_NOTE.split(":")[0] in page and NOT_CONVERGED in page


def test_the_latency_bars_mark_an_unconverged_timing(tmp_path, monkeypatch):
    from attn_zoo.report import plots

    drawn = {}

    def keep(fig, path):
        ax = fig.axes[0]
        drawn["labels"] = [t.get_text() for t in ax.get_yticklabels()]
        drawn["hatches"] = [p.get_hatch() for p in ax.patches]
        drawn["title"] = " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))

    monkeypatch.setattr(plots, "save", keep)
    frame = pd.concat(
        [_rows([[1.0, 2.0, 3.0]], [0.0]), _rows([[4.0, 5.0, 6.0]], [1.0]).assign(config_id="d", label="global")]
    )
    plots.bar_plot(frame, "latency_median_ms", tmp_path / "bars.png")
    marked = {label.split()[0]: label.endswith(NOT_CONVERGED) for label in drawn["labels"]}
    assert marked == {"swin": True, "global": False}
    assert sorted(h or "" for h in drawn["hatches"]) == ["", "////"]
    assert "pooled over seeds" in drawn["title"]
