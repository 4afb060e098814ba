"""Suite files: factors, includes, per-mechanism overrides, precedence, and one-line errors naming the file,
the key, the value and what is allowed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from attn_zoo.grid.suite import MAX_CELLS, SuiteError, load_suite

HEAD = """
[model]
preset = "zoo_s32"

[budget]
metric = "none"
"""


def write(tmp_path: Path, body: str, name: str = "s.toml") -> Path:
    """HEAD plus ``body``; a body with its own [model] table gets the preset there instead."""
    body, head = textwrap.dedent(body), HEAD
    if "[model]\n" in body:
        body = body.replace("[model]\n", '[model]\npreset = "zoo_s32"\n', 1)
        head = HEAD.replace('[model]\npreset = "zoo_s32"\n', "")
    path = tmp_path / name
    path.write_text(head + body)
    return path


def test_product_of_factors_with_variants_and_shared_config_ids(tmp_path):
    path = write(
        tmp_path,
        """
        [grid]
        mechanism = ["global", "swin"]
        seed = [0, 1]
        "knobs.window" = [4, 8]
        "model.img_size" = [32, 64]
        """,
    )
    suite = load_suite(path)
    # global has no window knob: its window factor collapses, leaving 2 sizes x 2 seeds
    assert len(suite.cells) == 2 * 2 + 2 * 2 * 2
    swin = [c for c in suite.cells if c.label == "swin"]
    assert {c.variant for c in swin} == {f"window={w}, img_size={s}" for w in (4, 8) for s in (32, 64)}
    assert {c.variant for c in suite.cells if c.label == "global"} == {"img_size=32", "img_size=64"}
    assert all(c.model_config().img_size == c.factors["model.img_size"] for c in suite.cells)
    # seeds of one configuration share config_id, and only seeds differ between them
    by_config: dict[str, set[int]] = {}
    for c in suite.cells:
        by_config.setdefault(c.config_id, set()).add(c.seed)
    assert len(by_config) == 2 + 4 and all(seeds == {0, 1} for seeds in by_config.values())
    assert len({c.cell_id for c in suite.cells}) == len(suite.cells)


def test_nested_grid_table_is_the_same_factor_as_a_quoted_key(tmp_path):
    quoted = load_suite(write(tmp_path, '[grid]\nmechanism = ["swin"]\n"knobs.window" = [2, 4]\n', "a.toml"))
    nested = load_suite(write(tmp_path, '[grid]\nmechanism = ["swin"]\n[grid.knobs]\nwindow = [2, 4]\n', "b.toml"))
    assert [c.cell_id for c in quoted.cells] == [c.cell_id for c in nested.cells]


def test_zip_mode_pairs_factors_and_seeds_multiply(tmp_path):
    path = write(
        tmp_path,
        """
        [suite]
        mode = "zip"
        [grid]
        mechanism = ["global", "swin"]
        "model.img_size" = [32, 64]
        seed = [0, 1, 2]
        """,
    )
    cells = load_suite(path).cells
    assert sorted((c.label, c.model_config().img_size, c.seed) for c in cells) == sorted(
        (m, s, seed) for m, s in (("global", 32), ("swin", 64)) for seed in range(3)
    )


def test_precedence_defaults_then_overrides_then_grid(tmp_path):
    path = write(
        tmp_path,
        """
        [data]
        source = "synthetic"
        [train]
        steps = 3
        lr = 1e-3
        [grid]
        mechanism = ["global", "swin"]
        [mechanisms.swin]
        window = 4
        [overrides.swin.train]
        lr = 5e-4
        [overrides.swin.model]
        drop_path_rate = 0.0
        """,
    )
    cells = {c.label: c for c in load_suite(path).cells}
    assert cells["global"].spec.train.lr == 1e-3
    assert cells["swin"].spec.train.lr == 5e-4
    assert cells["swin"].spec.model.drop_path_rate == 0.0
    assert cells["global"].spec.model.drop_path_rate == 0.05  # the preset's
    assert cells["swin"].spec.knobs == {"window": 4}
    # a grid factor beats both the override and the per-mechanism knob table
    swept = load_suite(path, {"grid.train.lr": [1e-2], "grid.knobs.window": [2]})
    swin = next(c for c in swept.cells if c.label == "swin")
    assert swin.spec.train.lr == 1e-2 and swin.spec.knobs == {"window": 2}


def test_sections_as_factors_datasets_and_budgets(tmp_path):
    path = write(
        tmp_path,
        """
        [data]
        source = "synthetic"
        train_size = 64
        [train]
        steps = 2
        [grid]
        mechanism = ["global"]
        data = [{ name = "bars32", resolution = 32 }, { name = "bars16", resolution = 16 }]
        budget = [{ name = "small", metric = "params", target = 1e5 }, { metric = "params", target = 2e5 }]
        """,
    )
    cells = load_suite(path).cells
    assert len(cells) == 4
    variants = sorted(c.variant for c in cells)
    assert variants[0] == "data=bars16, budget=metric=params target=200000"
    assert "data=bars32, budget=small" in variants
    assert {c.spec.data.options["resolution"] for c in cells} == {16, 32}
    assert all(c.spec.data.train_size == 64 for c in cells)  # merged over the section, not replacing it
    assert {c.spec.budget.target for c in cells} == {1e5, 2e5}


def test_include_merges_and_this_file_wins(tmp_path):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "base.toml").write_text(
        '[suite]\nname = "base"\n[model]\npreset = "zoo_s32"\nimg_size = 64\n[budget]\nmetric = "none"\n'
        '[grid]\nseed = [0, 1]\nmechanism = ["global"]\n'
    )
    path = tmp_path / "main.toml"
    path.write_text('[suite]\ninclude = ["inc/base.toml"]\n[model]\nimg_size = 32\n[grid]\nmechanism = ["swin"]\n')
    suite = load_suite(path)
    assert suite.name == "main"  # the including file names the suite
    assert sorted((c.label, c.seed) for c in suite.cells) == [("swin", 0), ("swin", 1)]
    assert {c.model_config().img_size for c in suite.cells} == {32}
    # what a run records holds every file that made the suite
    assert suite.text.startswith(path.read_text()) and "# ---- included file " in suite.text
    assert 'name = "base"' in suite.text


def test_cells_are_keyed_by_configuration_not_by_factor_names(tmp_path):
    a = load_suite(write(tmp_path, '[grid]\nmechanism = ["swin"]\n"knobs.window" = [4]\n', "a.toml"))
    b = load_suite(write(tmp_path, '[model]\nmechanism = "swin"\n[mechanisms.swin]\nwindow = 4\n', "b.toml"))
    assert a.cells[0].cell_id == b.cells[0].cell_id and a.cells[0].variant != b.cells[0].variant


BAD = [
    # (body, key, what the message says)
    ("[sweep]\nx = 1\n", "sweep", "unknown section 'sweep'; allowed: suite, model"),
    ('[grid]\nmechanism = ["nope"]\n', "grid.mechanism", "unknown mechanism 'nope' (str); allowed: "),
    ('[grid]\nmechanism = "swin"\n', "grid.mechanism", "must be a list of values, got 'swin' (str)"),
    ("[grid]\nmechanism = []\n", "grid.mechanism", "is empty; a factor needs at least one value"),
    ('[grid]\nmechanism = ["swin", "swin"]\n', "grid.mechanism", "lists a value twice"),
    ('[grid]\nmechanism = ["swin"]\n"knobs.windw" = [4]\n', "grid.knobs.windw", "has knob 'windw'"),
    ('[grid]\nmechanism = ["swin"]\n"knobs.window" = ["big"]\n', "grid.knobs.window", "got 'big' (str); allowed: int"),
    ('[grid]\nmechanism = ["swin"]\n"model.img_sise" = [32]\n', "grid.model.img_sise", "unknown key in [model]"),
    (
        '[grid]\nmechanism = ["swin"]\n"model.img_size" = ["32"]\n',
        "grid.model.img_size",
        "must be an integer, got '32'",
    ),
    ('[grid]\nmechanism = ["swin"]\nseed = [-1]\n', "grid.seed", "non-negative integers, got -1"),
    ('[grid]\nmechanism = ["swin"]\nfoo = [1]\n', "grid.foo", "unknown factor; allowed: mechanism, seed, preset"),
    ('[model]\nimg_size = "big"\n[grid]\nmechanism = ["swin"]\n', "model.img_size", "must be an integer, got 'big'"),
    ('[model]\ndims = [1, "a"]\n[grid]\nmechanism = ["swin"]\n', "model.dims", "must be a list of integers"),
    ('[model]\nbogus = 1\n[grid]\nmechanism = ["swin"]\n', "model.bogus", "unknown key in [model]; allowed:"),
    ('[train]\nlr = nan\n[grid]\nmechanism = ["swin"]\n', "train.lr", "must be a finite number, got nan"),
    ('[measure]\nlatency = 1\n[grid]\nmechanism = ["swin"]\n', "measure.latency", "must be true or false, got 1"),
    ('[mechanisms.swin]\nwindw = 4\n[grid]\nmechanism = ["swin"]\n', "mechanisms.swin.windw", "unknown knob; swin has"),
    ('[mechanisms.swin]\nwindow = 0\n[grid]\nmechanism = ["swin"]\n', "mechanisms.swin", "window must be >= 1, got 0"),
    (
        '[overrides.swinn.train]\nlr = 1.0\n[grid]\nmechanism = ["swin"]\n',
        "overrides.swinn",
        "unknown mechanism or preset",
    ),
    ('[overrides.swin.trian]\nlr = 1.0\n[grid]\nmechanism = ["swin"]\n', "overrides.swin.trian", "unknown section"),
    ('[suite]\nmode = "cross"\n', "suite.mode", "'cross' (str) unknown; allowed: product, zip"),
    ('[suite]\nname = "../../etc"\n', "suite.name", "must be a simple name"),
    ('[suite]\nincludes = ["x.toml"]\n', "suite.includes", "unknown key; allowed: name, description"),
    ('[suite]\ninclude = ["missing.toml"]\n', "suite.include", "'missing.toml' does not exist"),
    ('[suite]\nplugins = ["mech.py"]\n', "suite.plugins", "suite files never run code: load it explicitly"),
    (
        '[suite]\nmode = "zip"\n[grid]\nmechanism = ["global", "swin"]\n"model.img_size" = [32]\n',
        "grid",
        "mode 'zip' needs factors of equal length, got mechanism: 2, model.img_size: 1",
    ),
    (
        "[grid]\nmechanism = []\n".replace("[]", '["swin"]')
        + '"model.img_size" = ['
        + ", ".join(map(str, range(8, 8 + 101)))
        + "]\nseed = "
        + str(list(range(100)))
        + "\n",
        "grid",
        f"expands to 10100 cells; at most {MAX_CELLS} allowed",
    ),
    ('[grid]\nmechanism = ["swin"]\n"model.dims" = [[10, 20, 40, 80]]\n', "model", "must be divisible by heads"),
]


@pytest.mark.parametrize(("body", "key", "message"), BAD, ids=[b[1] + "|" + b[2][:24] for b in BAD])
def test_bad_suites_give_one_line_naming_file_key_value(tmp_path, body, key, message):
    path = write(tmp_path, body)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    text = str(info.value)
    assert text.startswith(f"{path}: [{key}] "), text
    assert message in text, text
    assert "\n" not in text and info.value.key == key


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(SuiteError, match=r"missing\.toml: file not found"):
        load_suite(tmp_path / "missing.toml")
    with pytest.raises(SuiteError, match=r": not a regular file"):
        load_suite(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("[suite\nname=")
    with pytest.raises(SuiteError, match=r"bad\.toml: is not valid TOML"):
        load_suite(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SuiteError, match=r"bin\.toml: is not valid TOML"):
        load_suite(binary)


def test_include_cycle_names_the_including_file(tmp_path):
    (tmp_path / "a.toml").write_text('[suite]\ninclude = ["b.toml"]\n')
    (tmp_path / "b.toml").write_text('[suite]\ninclude = ["a.toml"]\n')
    with pytest.raises(SuiteError, match=r"b\.toml: \[suite\.include\] '.*a\.toml' includes itself"):
        load_suite(tmp_path / "a.toml")


def test_set_overrides_are_checked_like_the_file(tmp_path):
    path = write(tmp_path, '[grid]\nmechanism = ["swin"]\n')
    with pytest.raises(SuiteError, match=r"\[model\.img_size\] must be an integer, got 'x'"):
        load_suite(path, {"model.img_size": "x"})
    with pytest.raises(SuiteError, match=r"\[bogus\.x\] --set: unknown key"):
        load_suite(path, {"bogus.x": 1})
    with pytest.raises(SuiteError, match=r"\[suite\.name\] '\.\./x' \(str\) must be a simple name"):
        load_suite(path, {"suite.name": "../x"})
    with pytest.raises(SuiteError, match=r"\[suite\.include\] includes are read from the file"):
        load_suite(path, {"suite.include": ["other.toml"]})


def test_declared_plugin_loads_only_when_given_explicitly(tmp_path):
    plugin = tmp_path / "mech.py"
    plugin.write_text("raise SystemExit('a suite file must never run this')\n")
    path = write(tmp_path, '[suite]\nplugins = ["mech.py"]\n[grid]\nmechanism = ["swin"]\n')
    with pytest.raises(SuiteError, match=r"--plugin .*mech\.py"):
        load_suite(path)
    # the user passed it (and the CLI loaded it): the declaration is satisfied, and load_suite runs nothing
    assert len(load_suite(path, plugins=(plugin,)).cells) == 1
