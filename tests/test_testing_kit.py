"""The conformance kit on every registered mechanism (built-ins, and installed plugins), its Python API and
`attn-zoo check`. Planted bugs it must catch are in test_testing_kit_planted.py."""

from __future__ import annotations

import json

import pytest
from test_testing_kit_planted import Clean, PlantedMacs

import attn_zoo
from attn_zoo.cli import main
from attn_zoo.errors import KnobError, UnknownNameError
from attn_zoo.testing import CHECKS, Report, assert_check, assert_conforms, check_mechanism, conformance_cases

# collected from the registry, so mechanisms merged later (and installed plugins) are covered too; mechanisms
# that other test modules register for themselves (source "module tests...") are not the product
MECHANISMS = sorted(
    name
    for name, spec in attn_zoo.list_mechanisms().items()
    if spec.source == "built-in" or spec.source.startswith("plugin ")
)


@pytest.mark.parametrize("name", MECHANISMS)
def test_every_registered_mechanism_conforms(name):
    report = check_mechanism(name)
    assert report.ok, f"{name} breaks the contract (a bug to fix in the mechanism):\n{report}"
    assert [r.check for r in report.results] == list(CHECKS)


def test_knobs_reach_the_mechanism():
    report = check_mechanism("swin", window=3, checks=["macs", "harness"])
    assert report.ok and report.knobs == {"window": 3}
    assert "window=3" in str(report)


def test_bad_knobs_and_names_are_the_callers_error():
    with pytest.raises(KnobError, match="knob 'window' got 'x'"):
        check_mechanism("swin", window="x")
    with pytest.raises(UnknownNameError, match="unknown mechanism 'swim'"):
        check_mechanism("swim")
    with pytest.raises(UnknownNameError, match="unknown conformance check 'shapes'; allowed: batch"):
        check_mechanism("swin", checks=["shapes"])


def test_report_forms():
    report = check_mechanism(PlantedMacs, checks=["shape", "macs"])
    assert isinstance(report, Report) and not report.ok and report.failed == ["macs"]
    assert report.mechanism == "plantedmacs"
    data = json.loads(report.to_json())
    assert data["ok"] is False and [r["status"] for r in data["results"]] == ["pass", "fail"]
    assert data["results"][1]["fix"].startswith("count every matmul")
    text = str(report)
    assert "PASS  shape" in text and "FAIL  macs" in text and "fix: count every matmul" in text
    assert text.endswith("1 passed, 1 failed, 0 skipped")


def test_pytest_helpers():
    assert conformance_cases() == list(CHECKS)
    assert assert_check(Clean, "batch").ok
    with pytest.raises(AssertionError, match=r"FAIL  macs .*\n.*fix: count every matmul"):
        assert_check(PlantedMacs, "macs")
    with pytest.raises(AssertionError, match=r"^macs failed\nconformance of 'plantedmacs'"):
        assert_conforms(PlantedMacs)


def test_checking_a_class_leaves_the_registry_as_it_was():
    before = dict(attn_zoo.list_mechanisms())
    check_mechanism(Clean, checks=["shape"])
    assert attn_zoo.list_mechanisms() == before
    assert "name" not in Clean.__dict__


def test_check_command(capsys):
    assert main(["check", "global", "--only", "shape", "--only", "macs"]) == 0
    out = capsys.readouterr().out
    assert "PASS  shape" in out and "PASS  macs" in out and "2 passed, 0 failed" in out
    assert main(["check", "swin", "--knob", "window=4", "--only", "sizes", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["knobs"] == {"window": 4} and data["results"][0]["check"] == "sizes"


def test_check_command_fails_with_status_1_and_says_what_to_fix(tmp_path, capsys):
    plugin = tmp_path / "wrong_macs.py"
    plugin.write_text(
        "from attn_zoo import register_mechanism\n"
        "from test_testing_kit_planted import PlantedMacs\n"
        "register_mechanism('wrong_macs')(type('WrongMacs', (PlantedMacs,), {}))\n"
    )
    with attn_zoo.registry.isolated_registry():
        assert main(["--plugin", str(plugin), "check", "wrong_macs", "--only", "macs"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  macs" in out and "but FlopCounterMode counts" in out and "fix:" in out


@pytest.mark.parametrize(
    ("planted", "message"),
    [
        ("PlantedIgnoresChannels", "input 12 of 24 channels: 12-23 (the second half)"),
        ("PlantedIgnoresBottomHalf", "input 32 of 64 positions: rows 4-7 (the bottom half)"),
        ("PlantedDropsLastColumn", "input 8 of 64 positions: column 7 (the last column)"),
    ],
)
def test_check_command_names_what_a_mechanism_ignores(planted, message, tmp_path, capsys):
    plugin = tmp_path / "ignores.py"
    plugin.write_text(
        "from attn_zoo import register_mechanism\n"
        f"from test_testing_kit_planted import {planted}\n"
        f"register_mechanism('ignores')(type('Ignores', ({planted},), {{}}))\n"
    )
    with attn_zoo.registry.isolated_registry():
        assert main(["--plugin", str(plugin), "check", "ignores"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  dependence  the output does not depend on {message} at 8x8" in out
    assert "9 passed, 1 failed, 0 skipped" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "swim"], "unknown mechanism 'swim'"),
        (["check", "swin", "--knob", "windw=4"], "unknown knob of mechanism 'swin' 'windw'"),
        (["check", "swin", "--knob", "window=x"], "knob 'window' got 'x'"),
        (["check", "swin", "--dim", "25"], "channels (25) must be divisible by num_heads (3)"),
        (["check", "msda", "--dim", "8", "--heads", "2"], "dim 8 with 2 heads: mechanism 'msda': num_heads (2) must"),
        (["check", "swin", "--only", "shapes"], "unknown conformance check 'shapes'; allowed: batch"),
    ],
)
def test_check_command_user_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
