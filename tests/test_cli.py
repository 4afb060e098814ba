"""The command line: list, count --json, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attn_zoo.cli import main
from attn_zoo.grid import Store, load_suite

TINY = Path(__file__).resolve().parent.parent / "suites" / "tiny.toml"


def test_list_json_shows_mechanisms_knobs_backends(capsys):
    assert main(["list", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    swin = info["mechanisms"]["swin"]
    assert swin["knobs"]["window"] == {"type": "int", "default": 7, "doc": "window side M."}
    assert swin["backends"]["reference"] == "available"
    assert "swin_t" in info["presets"]


def test_list_text(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "swin" in out and "window = 7" in out and "backends:" in out


def test_count_json_keys_and_published_numbers(capsys):
    assert main(["count", "swin_t", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert {"params", "macs", "flops", "attention_macs"} <= set(counts)
    assert counts["params"] == 28288354
    assert abs(counts["macs"] / 4.491e9 - 1) < 0.001


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["count", "swin_q"], "unknown preset 'swin_q'; allowed:"),
        (["count", "swin_t", "--mechanism", "nope"], "unknown mechanism 'nope'"),
        (["count", "swin_t", "--img-size", "2"], "--img-size must be at least 8"),
        (["run", "no/such/suite.toml"], "no/such/suite.toml: file not found"),
        (["results", "missing.sqlite"], "results store 'missing.sqlite' does not exist"),
        (["run", "suites/tiny.toml", "--set", "oops"], "--set 'oops': expected KEY=VALUE"),
    ],
)
def test_user_errors_are_one_line_without_traceback(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["count"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required: preset" in err and err.count("\n") == 1


# -- forcing an attention path: --backend on run, bench and count ----------------------------------------------
BENCH_FAST = ["--preset", "zoo_s32", "--img-size", "32", "--threads", "1", "--warmup", "1", "--repeats", "1"]
BENCH_FAST += ["--no-memory", "--no-efficiency", "--no-count"]


@pytest.fixture
def _restore_threads():
    yield
    import torch

    torch.set_num_threads(2)  # bench sets the requested thread count for the process


def test_list_json_names_the_path_auto_takes_here(capsys):
    assert main(["list", "--json", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)["mechanisms"]
    # the first usable path of the CPU default order; each call then picks by its shapes (docs/backends.md)
    assert info["swin"]["auto"] == info["iwsa"]["auto"] == info["gcvit"]["auto"] == "sdpa"
    assert info["global"]["auto"] == info["ssa"]["auto"] == "sdpa" and info["msda"]["auto"] == "cpu_fast"
    assert info["swin"]["backends"]["flex"].startswith("flex_attention is a fast path only on CUDA")


@pytest.mark.usefixtures("_restore_threads")
@pytest.mark.parametrize(("backend", "recorded"), [("sdpa", ["sdpa"]), ("reference", ["reference"]), (None, None)])
def test_bench_backend_is_forced_and_recorded_in_the_row_and_the_store(backend, recorded, tmp_path, capsys):
    store_path = tmp_path / "b.sqlite"
    extra = ["--backend", backend] if backend else []
    assert main(["bench", "swin", *BENCH_FAST, *extra, "--store", str(store_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = recorded or rows[0]["backends"]  # auto: what the shape table picks per call (test_dispatch.py)
    assert expected and set(expected) <= {"reference", "sdpa"} and rows[0]["backends"] == expected
    (cell,) = Store(store_path).cells()
    assert cell["backends"] == expected and cell["spec"]["model"]["backend"] == (backend or "auto")


@pytest.mark.usefixtures("_restore_threads")
def test_bench_takes_several_paths_one_cell_each(capsys):
    argv = ["bench", "swin", *BENCH_FAST, "--backend", "auto", "reference", "sdpa", "--no-store", "--json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["backend"], r["backends"]) for r in rows[1:]] == [("reference", ["reference"]), ("sdpa", ["sdpa"])]
    # auto: the shape table's choice per call (tests/test_dispatch.py checks it against what ran)
    assert rows[0]["backend"] == "auto" and rows[0]["backends"] and set(rows[0]["backends"]) <= {"reference", "sdpa"}


def test_count_backend_is_forced_and_reported(capsys):
    argv = ["count", "zoo_s32", "--mechanism", "msda", "--img-size", "32", "--backend", "reference", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["backends"] == ["reference"]


def test_run_backend_reaches_every_cell_as_model_backend():
    suite = load_suite(TINY, {"model.backend": "reference"})
    assert {c.spec.model.backend for c in suite.cells} == {"reference"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["count", "swin_t", "--backend", "nope"], "unknown backend 'nope' for mechanism 'swin'"),
        (["count", "swin_t", "--backend", "flex"], "backend 'flex' is not available on cpu: flex_attention is a"),
        (["count", "dilateformer_t", "--backend", "natten"], "'natten' implements only border='inward'"),
        (["bench", "swin", "--backend", "xformers"], "backend 'xformers' is not available on cpu: xformers"),
        (["bench", "msda", "--backend", "sdpa"], "unknown backend 'sdpa' for mechanism 'msda' (it offers cpu_fast"),
        (["run", str(TINY), "--backend", "cpu_fast"], "[model] model 'zoo_s32': unknown backend 'cpu_fast'"),
        (["run", str(TINY), "--backend", "xformers"], "[model.backend] model 'zoo_s32': backend 'xformers' is not"),
    ],
)
def test_unknown_or_unavailable_backend_is_one_line_before_any_cell(argv, message, capsys, tmp_path):
    out = tmp_path / "results"
    extra = {"run": ["--out", str(out)], "bench": ["--store", str(out / "b.sqlite")]}.get(argv[0], [])
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()  # nothing was written: the check runs before any store or cell
