"""Bad suite files, fuzzed (issue 10, item 7): wrong types, unknown keys, huge grids, empty factors, bad paths.

Whatever hypothesis writes, ``load_suite`` raises only ``SuiteError``, one line that starts with the file
and names the key; for the targeted mutations the key and the value are in the message; ``attn-zoo run`` on
the same file exits 2 with that line and no traceback, and writes nothing into the results directory.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attn_zoo.cli import main
from attn_zoo.grid.checks import section_fields
from attn_zoo.grid.suite import MAX_CELLS, SUITE_KEYS, SuiteError, load_suite

BASE = {
    "suite": {"name": "fuzz"},
    "model": {"preset": "zoo_s32", "img_size": 32},
    "data": {"source": "synthetic", "train_size": 64},
    "train": {"steps": 2, "batch_size": 16, "lr": 1e-3},
    "budget": {"metric": "none"},
    "measure": {"latency": False, "count": False},
    "grid": {"mechanism": ["global", "swin"], "seed": [0]},
    "mechanisms": {"swin": {"window": 4}},
}
# (section, key) -> a value of the right type: the fuzzer puts values of other types there
TYPED = {
    ("model", "img_size"): 32,
    ("model", "dims"): [12, 24, 48, 96],
    ("model", "mlp_ratio"): 2.0,
    ("model", "stem"): "conv",
    ("train", "lr"): 1e-3,
    ("train", "batch_size"): 16,
    ("train", "label_smoothing"): 0.1,
    ("data", "train_size"): 64,
    ("budget", "target"): 1e5,
    ("measure", "latency"): False,
    ("measure", "repeats"): 3,
}


def quote(text: str) -> str:
    """A TOML basic string: JSON's escaping, but characters outside the BMP and DEL written TOML's way."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{quote(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def to_toml(doc: dict) -> str:
    """Every section as a [table] of ``key = value`` lines (nested tables inline)."""
    lines = []
    for section, table in doc.items():
        if not isinstance(table, dict):
            lines.insert(0, f"{quote(section)} = {toml_value(table)}")
            continue
        lines.append(f"[{quote(section)}]")
        lines += [f"{quote(str(k))} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=12)


def wrong_type(value, right) -> bool:
    """True when ``value`` cannot stand where ``right`` stands (ints are fine where floats go)."""
    if isinstance(right, bool):
        return not isinstance(value, bool)
    if isinstance(right, float):
        return isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if isinstance(right, int):
        return isinstance(value, bool) or not isinstance(value, int)
    if isinstance(right, list):
        return not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
    return not isinstance(value, type(right))


@st.composite
def mutations(draw):
    """``(document, key that must be named or None, value that must be shown or None)``."""
    doc = copy.deepcopy(BASE)
    kind = draw(st.sampled_from(["type", "unknown", "empty", "huge", "include", "section", "anything"]))
    if kind == "type":
        section, key = draw(st.sampled_from(sorted(TYPED)))
        value = draw(values.filter(lambda v: wrong_type(v, TYPED[(section, key)])))
        doc[section][key] = value
        return doc, f"{section}.{key}", value
    if kind == "unknown":
        section = draw(st.sampled_from(["model", "train", "budget", "measure", "suite"]))
        key = draw(names.filter(lambda k: "." not in k and k not in doc[section]))
        doc[section][key] = draw(scalars)
        known = set(SUITE_KEYS) if section == "suite" else set(section_fields(section))
        if key in known:
            return doc, None, None  # a real field: one clear error or a valid suite
        return doc, f"{section}.{key}", None
    if kind == "empty":
        factor = draw(st.sampled_from(["mechanism", "seed", "model.img_size", "knobs.window", "train.lr"]))
        doc["grid"][factor] = []
        return doc, f"grid.{factor}", None
    if kind == "huge":
        n = draw(st.integers(min_value=math.isqrt(MAX_CELLS) + 1, max_value=3 * math.isqrt(MAX_CELLS)))
        doc["grid"]["seed"] = list(range(n))
        doc["grid"]["model.img_size"] = list(range(16, 16 + n))
        doc["grid"]["mechanism"] = ["swin"]
        return doc, "grid", None
    if kind == "include":
        bad = draw(st.sampled_from(["missing.toml", "../../nowhere/x.toml", "/dev/null/x.toml", ".", "", "\x00.toml"]))
        doc["suite"]["include"] = [bad] if draw(st.booleans()) else bad
        return doc, "suite.include", None
    if kind == "section":
        doc[draw(names.filter(lambda k: k not in BASE and k not in ("overrides",)))] = {"x": draw(scalars)}
        return doc, None, None
    section = draw(st.sampled_from(sorted(BASE)))
    doc[section] = draw(st.dictionaries(names, values, max_size=3)) if draw(st.booleans()) else draw(values)
    return doc, None, None


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(mutations())
def test_fuzzed_suites_fail_with_one_clear_line(case):
    doc, key, value = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.toml"
        path.write_text(to_toml(doc))
        try:
            load_suite(path)
        except SuiteError as exc:
            text = str(exc)
        else:
            assert key is None, f"expected an error naming [{key}]"
            return
        assert text.startswith(f"{path}: "), text
        assert "\n" not in text and "Traceback" not in text
        if key is not None:
            assert f"[{key}" in text, text
        if value is not None and not isinstance(value, (dict, list)):
            shown = repr(value)
            assert shown[:40] in text or shown[:40] in text.replace("\\\\", "\\"), (shown, text)


BAD_FILES = [
    '[grid]\nmechanism = ["swin", 7]\n',
    '[model]\npreset = "zoo_s32"\nimg_size = "a lot"\n[grid]\nmechanism = ["swin"]\n',
    '[suite]\ninclude = ["nope.toml"]\n',
    "[grid\n",
    '[model]\npreset = "zoo_s32"\n[grid]\nmechanism = ["swin"]\nseed = []\n',
]


@pytest.mark.parametrize("text", BAD_FILES)
def test_run_with_a_bad_suite_writes_nothing(tmp_path, capsys, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "results"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attn-zoo: error: {path}: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def _load_one_line(doc: dict, overrides: dict | None = None) -> str | None:
    """``load_suite`` on ``doc``: None when valid, else the error's text, which must be one line naming the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.toml"
        path.write_text(to_toml(doc))
        try:
            load_suite(path, overrides)
        except SuiteError as exc:
            text = str(exc)
            assert text.startswith(f"{path}: ") and "\n" not in text and "Traceback" not in text, text
            return text
    return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(values, min_size=1, max_size=3), st.booleans())
def test_fuzzed_mechanism_lists_in_the_file_or_through_set_are_one_line(mechanisms, through_set):
    """Tables, lists and numbers where mechanism names go (issue 21: ``[{a = 1}]`` raised a TypeError)."""
    doc = copy.deepcopy(BASE)
    doc["grid"]["knobs.window"] = [4]
    overrides = None
    if through_set:
        overrides = {"grid.mechanism": mechanisms}
    else:
        doc["grid"]["mechanism"] = mechanisms
    text = _load_one_line(doc, overrides)
    if not all(isinstance(m, str) for m in mechanisms):
        assert text is not None and "[grid.mechanism]" in text


NUMBER_KEYS = [
    ("train", "steps"),
    ("train", "epochs"),
    ("train", "batch_size"),
    ("train", "lr"),
    ("train", "warmup_fraction"),
    ("model", "img_size"),
    ("model", "mlp_ratio"),
    ("data", "train_size"),
    ("budget", "target"),
    ("measure", "repeats"),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(NUMBER_KEYS),
    st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_fuzzed_numbers_are_refused_in_one_line_or_accepted_within_a_year(where, value):
    """Any number in [train], [model], [data], [budget], [measure]: one line, or a suite whose step count fits
    in a year (issue 21)."""
    from attn_zoo.grid.checks import MIN_STEP_S, YEAR_S

    section, key = where
    doc = copy.deepcopy(BASE)
    if key == "epochs":
        doc["train"].pop("steps")
    doc[section][key] = value
    text = _load_one_line(doc)
    if text is None and key == "steps":
        assert 1 <= value <= YEAR_S / MIN_STEP_S
    if isinstance(value, float) and not math.isfinite(value):
        assert text is not None  # NaN or infinity: refused
