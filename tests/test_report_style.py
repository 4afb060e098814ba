"""Colours and markers: fixed for the zoo's mechanisms, from a hash of the name for plugins, the same in
every figure whatever else it shows."""

from __future__ import annotations

import subprocess
import sys

from attn_zoo.report.style import (
    KNOWN,
    MARKERS,
    PALETTE,
    PLUGIN_MARKERS,
    PLUGIN_PALETTE,
    colors_for,
    markers_for,
    style_of,
)


def test_builtins_are_fixed():
    assert [style_of(name) for name in KNOWN] == list(zip(PALETTE, MARKERS))[: len(KNOWN)]
    assert colors_for(["swin"])["swin"] == colors_for(["global", "my_attn", "swin"])["swin"] == PALETTE[1]
    assert markers_for(["ssa", "axial"])["ssa"] == MARKERS[2]


def test_plugins_by_a_hash_of_the_name():
    # golden values: a change of the hash or the palettes changes every stored report's look
    assert style_of("my_attn") == ("#332288", ">")
    assert style_of("axial") == ("#117733", "h")
    assert style_of("cswin") == ("#CC6677", "h")
    colour, marker = style_of("some_plugin")
    assert colour in PLUGIN_PALETTE and marker in PLUGIN_MARKERS
    assert marker not in MARKERS[: len(KNOWN)]  # a plugin never looks like a built-in


def test_the_same_whatever_else_is_in_the_figure():
    alone = (colors_for(["axial"]), markers_for(["axial"]))
    crowded = ["global", "swin", "ssa", "iwsa", "msda", "gcvit", "msa_conv", "my_attn", "cswin", "axial"]
    assert colors_for(crowded)["axial"] == alone[0]["axial"]
    assert markers_for(crowded)["axial"] == alone[1]["axial"]


def test_the_same_in_another_process():
    code = "from attn_zoo.report.style import style_of; print(style_of('my_attn'), style_of('cswin'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(style_of("my_attn")) + " " + str(style_of("cswin"))
