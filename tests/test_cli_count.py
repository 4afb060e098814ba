"""`attn-zoo count`: --knob, M/G with 3 significant digits, formula vs counted attention MACs, per stage."""

from __future__ import annotations

import json

import pytest

from attn_zoo.backbone.config import MixerSpec
from attn_zoo.backbone.presets import create_model, get_preset
from attn_zoo.cli import main
from attn_zoo.cli.count_cmd import si
from attn_zoo.measure.counting import analytic_attention_macs, count_model


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (12_345_678, "12.3 M"),
        (5_760, "0.00576 M"),
        (999_400_000, "999 M"),
        (1_000_000_000, "1.00 G"),
        (4_491_000_000, "4.49 G"),
        (123_456_789_012, "123 G"),
        (0, "0 M"),
    ],
)
def test_si_keeps_three_significant_digits(value, text):
    assert si(value) == text


def _count(capsys, *argv):
    assert main(["count", "zoo_s32", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_knobs_reach_the_model_and_the_counts(capsys):
    w4 = _count(capsys, "--mechanism", "swin", "--knob", "window=4")
    w2 = _count(capsys, "--mechanism", "swin", "--knob", "window=2")
    assert w4["knobs"] == {"window": 4} and w2["knobs"] == {"window": 2}
    config = get_preset("zoo_s32").replace(mixer=MixerSpec("swin", {"window": 4}))
    expected = count_model(create_model(config), 32)
    assert w4["macs"] == expected["macs"] and w4["attention_macs"] == expected["attention_macs"]
    assert w4["attention_macs"] != w2["attention_macs"]
    # without --mechanism the knob goes to the preset's one mechanism
    assert _count(capsys, "--knob", "qkv_bias=false")["knobs"] == {"qkv_bias": False}


def test_formula_vs_counted_and_stages_add_up(capsys):
    data = _count(capsys, "--mechanism", "gcvit")
    config = get_preset("zoo_s32").replace(mixer="gcvit")
    assert data["attention_macs_formula"] == analytic_attention_macs(create_model(config), 32)
    assert data["attention_macs_formula"] == data["attention_macs"]  # GC-ViT's formulas are exact
    stages = [r for r in data["stages"] if r["part"].startswith("stage")]
    assert [r["map"] for r in stages] == [[16, 16], [8, 8], [4, 4], [2, 2]]
    assert sum(r["macs"] for r in data["stages"]) == data["macs"]
    assert sum(r["attention_macs"] for r in stages) == data["attention_macs"]
    assert sum(r["attention_macs_formula"] for r in stages) == data["attention_macs_formula"]


def test_text_output(capsys):
    assert main(["count", "zoo_s32", "--mechanism", "swin", "--knob", "window=4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("zoo_s32 with swin (knobs: window=4) at 32x32, one image:")
    assert "  MACs            27.2 M" in out
    assert "  attention MACs  11.7 M counted, 11.7 M by the formulas (+0.0%)" in out
    assert "stage 0  16x16  5.98 M" in out and "stage 3  2x2" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mechanism", "swin", "--knob", "windw=4"], "unknown knob of mechanism 'swin' 'windw'"),
        (["--mechanism", "swin", "--knob", "window=x"], "knob 'window' got 'x'"),
        (["--knob", "window"], "--knob 'window': expected KEY=VALUE, e.g. window=4"),
    ],
)
def test_bad_knobs_are_one_line(argv, message, capsys):
    assert main(["count", "zoo_s32", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_mechanism_without_a_formula_shows_a_dash(tmp_path, capsys):
    from attn_zoo.registry import isolated_registry

    plugin = tmp_path / "noformula.py"
    plugin.write_text(
        "from attn_zoo import register_mechanism\n"
        "from attn_zoo.mechanisms.base import Mixer\n"
        "@register_mechanism('noformula')\n"
        "class NoFormula(Mixer):\n"
        "    '''Scales the tokens.'''\n"
        "    def forward(self, x, context=None):\n"
        "        return 2 * x\n"
    )
    with isolated_registry():
        assert main(["--plugin", str(plugin), "count", "zoo_s32", "--mechanism", "noformula"]) == 0
    out = capsys.readouterr().out
    assert "  attention MACs  0 M counted, - by the formulas (-)" in out
