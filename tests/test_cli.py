"""The command line: list, count --json, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from attn_zoo.cli import main


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
