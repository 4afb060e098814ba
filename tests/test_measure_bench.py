"""``attn-zoo bench``: rows in a store with their configuration and environment; repeated runs add rows;
one-line errors for bad targets and arguments."""

from __future__ import annotations

import json

import pytest
import torch

from attn_zoo.cli import main
from attn_zoo.grid.store import Store

FAST = ["--preset", "zoo_s32", "--threads", "1", "--warmup", "1", "--repeats", "2", "--no-memory", "--no-efficiency"]


@pytest.fixture(autouse=True)
def _threads():
    yield
    torch.set_num_threads(2)  # bench sets the requested thread count for the process


def test_bench_writes_rows_and_repeated_runs_add_rows(tmp_path, capsys):
    store_path = tmp_path / "bench.sqlite"
    argv = ["bench", "global", "swin", "--img-size", "32", "--knob", "qkv_bias=false", *FAST]
    assert main([*argv, "--store", str(store_path), "--json", "--mode", "fwd", "fwdbwd"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["label"], r["img_size"], r["batch"], r["status"]) for r in rows] == [
        ("global", 32, 1, "ok"),
        ("swin", 32, 1, "ok"),
    ]
    m = rows[0]["metrics"]
    assert m["latency_fwd_repeats"] == 2 and m["latency_fwdbwd_repeats"] == 2 and "latency_train_median_ms" not in m
    assert m["macs"] > 0 and m["latency_median_ms"] == m["latency_fwd_median_ms"]
    assert rows[0]["environment"]["threads"] == 1 and rows[0]["environment"]["dtype"] == "float32"

    assert main([*argv[:2], "--img-size", "32", *FAST, "--store", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "global" in out and "median ms" in out

    store = Store(store_path)
    cells = store.cells()
    assert len(cells) == 3 and {c["status"] for c in cells} == {"ok"}
    assert len({c["cell_id"] for c in cells}) == 3  # the second run of the same cell is a new row
    spec = cells[0]["spec"]
    assert spec["knobs"] == {"qkv_bias": False} and spec["measure"]["repeats"] == 2
    assert spec["model"]["img_size"] == 32 and spec["model"]["mixer"][0][0]["knobs"] == {"qkv_bias": False}
    env = cells[0]["environment"]
    assert {"torch", "timm", "natten", "xformers", "commit", "device_name", "threads", "dtype"} <= set(env)
    frame = store.frame()
    assert len(frame) == 3 and frame["latency_fwd_median_ms"].notna().all()
    assert len(store.runs()) == 2


def test_bench_preset_target_without_store(capsys):
    assert main(["bench", "zoo_s32", "--img-size", "32", *FAST[2:], "--no-store", "--no-count"]) == 0
    assert "zoo_s32" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "nope"], "unknown preset or mechanism 'nope'; allowed:"),
        (["bench", "global", "--img-size", "4"], "argument --img-size: got '4'; allowed: an integer >= 8"),
        (["bench", "global", "--knob", "window"], "--knob 'window': expected KEY=VALUE"),
        (["bench", "global", "--knob", "window=7"], "unknown knob of mechanism 'global' 'window'"),
        (["bench", "swin_t", "--knob", "window=7"], "--knob applies to mechanism targets; none given"),
        (
            ["bench", "global", "--target-ci", "3"],
            "argument --target-ci: got '3'; allowed: a finite number > 0 and <= 1",
        ),
    ],
)
def test_bench_user_errors_are_one_line(argv, message, capsys, tmp_path):
    try:  # argparse's own checks (numbers out of range) exit from inside main
        code = main([*argv, "--store", str(tmp_path / "s.sqlite")])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "s.sqlite").exists()  # nothing written before the arguments are known good


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bench_on_cuda_without_cuda_is_a_one_line_error(capsys, tmp_path):
    assert main(["bench", "global", "--device", "cuda", "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: torch sees no CUDA device here; allowed: cpu" in err and err.count("\n") == 1
    assert not (tmp_path / "s.sqlite").exists()
