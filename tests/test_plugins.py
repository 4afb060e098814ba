"""Third-party mechanisms: entry points of installed packages, local plugin files (--plugin, [suite] plugins),
and the errors when a plugin is broken or takes a built-in's name. Every test undoes its registrations."""

from __future__ import annotations

import json
import os
import textwrap
import warnings
from pathlib import Path

import pytest

import attn_zoo
from attn_zoo import registry
from attn_zoo.cli import main
from attn_zoo.errors import ConfigError, UnknownNameError
from attn_zoo.grid import Store, SuiteError, load_suite
from attn_zoo.registry import PLUGINS_ENV, isolated_registry, load_entry_points, load_plugin_file, plugin_errors

# a minimal mechanism, as a plugin author would write it (decorated: usable from a file or an entry point)
SCALE = '''
from attn_zoo import register_mechanism
from attn_zoo.mechanisms.base import Mixer


@register_mechanism("{name}")
class Scale(Mixer):
    """Multiplies the tokens by a constant (a test plugin).

    Args:
        gain: the constant.
    """

    def __init__(self, dim: int, num_heads: int, *, feat_size=None, gain: float = 2.0):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.gain = gain

    def forward(self, x, context=None):
        self.check_input(x)
        return x * self.gain

    def attention_macs(self, height, width):
        return 0
'''

UNDECORATED = SCALE.replace('@register_mechanism("{name}")\n', "")


@pytest.fixture(autouse=True)
def _isolated():
    with isolated_registry():
        yield


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def fake_distribution(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """An installed package as importlib.metadata sees it: modules plus a .dist-info with entry_points.txt."""
    for module, text in modules.items():
        write(root / f"{module}.py", text)
    info = root / f"{dist}-0.1.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    write(info / "entry_points.txt", f"[attn_zoo.mechanisms]\n{lines}\n")


def test_entry_points_register_and_a_broken_plugin_does_not_stop_the_others(tmp_path, monkeypatch):
    fake_distribution(
        tmp_path,
        "good_plugin",
        {"scale_ep": "good_mod:Scale", "scale_deco": "deco_mod"},
        {"good_mod": SCALE.format(name="scale_ep"), "deco_mod": SCALE.format(name="scale_deco")},
    )
    fake_distribution(tmp_path, "plain_plugin", {"plain": "plain_mod:Scale"}, {"plain_mod": UNDECORATED})
    fake_distribution(
        tmp_path, "broken_plugin", {"broken": "broken_mod:Thing"}, {"broken_mod": "import no_such_module\n"}
    )
    fake_distribution(tmp_path, "clash_plugin", {"swin": "clash_mod:Scale"}, {"clash_mod": UNDECORATED})
    fake_distribution(tmp_path, "odd_plugin", {"not_a_mixer": "odd_mod:VALUE"}, {"odd_mod": "VALUE = 3\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        errors = load_entry_points()
    assert len(caught) == 4 and all(issubclass(w.category, RuntimeWarning) for w in caught)
    assert any("plugin 'broken' from broken_plugin 0.1 (broken_mod:Thing) failed" in str(w.message) for w in caught)
    mechs = attn_zoo.list_mechanisms()
    assert mechs["scale_ep"].source == "plugin good_plugin 0.1" and mechs["scale_ep"].knobs["gain"].default == 2.0
    assert mechs["scale_deco"].source == "plugin good_plugin 0.1"
    assert mechs["swin"].source == "built-in"  # the clash did not replace the built-in
    assert "ModuleNotFoundError: No module named 'no_such_module'" in errors["entry point broken"]
    assert "the name 'swin' is taken by the built-in mechanism attn_zoo.mechanisms.swin" in errors["entry point swin"]
    assert "expected a Mixer subclass" in errors["entry point not_a_mixer"]
    assert (
        "class Scale is not registered: decorate it with @register_mechanism('plain') (the entry point's name)"
        in errors["entry point plain"]
    )
    assert "plain" not in mechs
    assert plugin_errors() == errors
    # asking for the broken plugin's mechanism says why it is missing
    with pytest.raises(UnknownNameError, match=r"unknown mechanism 'broken'.*plugin 'broken' .* failed to load"):
        attn_zoo.create_mechanism("broken", dim=8, num_heads=2)


def test_entry_point_name_must_match_the_decorated_name(tmp_path, monkeypatch):
    fake_distribution(
        tmp_path, "named_plugin", {"other_name": "named_mod:Scale"}, {"named_mod": SCALE.format(name="real_name")}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning):
        errors = load_entry_points()
    assert (
        "registers itself as 'real_name' but the entry point is named 'other_name'" in errors["entry point other_name"]
    )
    assert "real_name" not in attn_zoo.list_mechanisms()  # a failed plugin leaves nothing half-registered


def test_plugin_file_registers_once_and_leaves_the_environment_alone(tmp_path, monkeypatch):
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    path = write(tmp_path / "my_plugin.py", SCALE.format(name="scale_file"))
    assert load_plugin_file(path) == ["scale_file"]
    assert load_plugin_file(path) == ["scale_file"]  # a second load does not run the file again
    spec = attn_zoo.list_mechanisms()["scale_file"]
    assert spec.source == f"file {path.resolve()}"
    assert path.resolve() in registry.plugin_files()
    assert PLUGINS_ENV not in os.environ  # workers are given their plugin files as arguments
    m = attn_zoo.create_mechanism("scale_file", dim=8, num_heads=2, gain=3.0)
    assert m.gain == 3.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("raise RuntimeError('boom')\n", "failed to load: RuntimeError: boom"),
        (SCALE.format(name="swin"), "mechanism 'swin' is already registered by attn_zoo.mechanisms.swin.SwinAttention"),
        (SCALE.format(name="Bad-Name"), "must be lower_snake_case"),
    ],
)
def test_broken_plugin_file_errors_name_the_file(tmp_path, text, message):
    path = write(tmp_path / "bad_plugin.py", text)
    with pytest.raises(ConfigError) as err:
        load_plugin_file(path)
    assert f"plugin file {str(path)!r}" in str(err.value) and message in str(err.value)
    assert attn_zoo.list_mechanisms()["swin"].source == "built-in"


def test_a_plugin_file_may_register_no_mechanism(tmp_path):
    """It may register a preset or a data source instead; loading it is not an error."""
    assert load_plugin_file(write(tmp_path / "nothing.py", "x = 1\n")) == []


def test_missing_plugin_file():
    with pytest.raises(ConfigError, match=r"plugin file 'nope\.py' does not exist or is not a \.py file"):
        load_plugin_file("nope.py")


def test_env_plugin_files_load_in_a_fresh_process_and_broken_ones_are_reported(tmp_path, monkeypatch):
    good = write(tmp_path / "good.py", SCALE.format(name="scale_env"))
    bad = write(tmp_path / "bad.py", "raise ValueError('nope')\n")
    monkeypatch.setenv(PLUGINS_ENV, f"{bad}:{good}")
    monkeypatch.setitem(registry._LOADED, "entry_points", False)  # as in a new worker process
    with pytest.warns(RuntimeWarning, match="bad.py"):
        mechs = attn_zoo.list_mechanisms()
    assert "scale_env" in mechs
    assert f"(named in ${PLUGINS_ENV})" in plugin_errors()[f"file {bad}"]


@pytest.mark.parametrize("where", ["global", "command"])
def test_cli_plugin_option(tmp_path, capsys, where):
    path = write(tmp_path / "cli_plugin.py", SCALE.format(name="scale_cli"))
    argv = ["--plugin", str(path), "list", "--json"] if where == "global" else ["list", "--json", "--plugin", str(path)]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mechanisms"]["scale_cli"]["source"] == f"file {path.resolve()}"
    assert info["mechanisms"]["scale_cli"]["knobs"]["gain"]["doc"] == "the constant."


def test_cli_plugin_files_never_reach_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    path = write(tmp_path / "env_plugin.py", SCALE.format(name="scale_env_cli"))
    seen = []
    monkeypatch.setattr("attn_zoo.cli.list_cmd.run", lambda args: seen.append(os.environ.get(PLUGINS_ENV)) or 0)
    assert main(["--plugin", str(path), "list"]) == 0
    assert seen == [None] and PLUGINS_ENV not in os.environ


def test_plugin_files_travel_with_the_cells_to_the_worker_command(tmp_path, monkeypatch):
    """Suite.plugins / Cell.plugins hold the --plugin files; LocalExecutor appends ``--plugin FILE`` to its
    worker command and the cell worker (``python -m attn_zoo.grid.cell``) loads them before the cell."""
    import sys

    from attn_zoo.grid.cell import main as cell_main
    from attn_zoo.grid.executors import run_cell_in_worker

    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    plugin = write(tmp_path / "travel.py", SCALE.format(name="scale_travel"))
    suite = tmp_path / "t.toml"
    suite.write_text('[model]\npreset = "zoo_s32"\n[budget]\nmetric = "none"\n[grid]\nmechanism = ["global"]\n')
    loaded = load_suite(suite, plugins=(plugin,))
    assert loaded.plugins == (str(plugin.resolve()),) and loaded.cells[0].plugins == loaded.plugins
    echo = "import json, sys; json.dump({'status': 'ok', 'metrics': {}, 'argv': sys.argv[1:]}, open(sys.argv[2], 'w'))"
    result = run_cell_in_worker(loaded.cells[0], artifact_dir=tmp_path / "a", command=[sys.executable, "-c", echo])
    assert result["argv"][3:] == ["--plugin", str(plugin.resolve())], result

    seen = []
    monkeypatch.setattr(
        "attn_zoo.grid.cell.run_cell",
        lambda spec, artifact_dir=None: (
            seen.append(spec) or {"status": "ok", "metrics": {}, "mechanisms": sorted(attn_zoo.list_mechanisms())}
        ),
    )
    spec_path, result_path = tmp_path / "spec.json", tmp_path / "result.json"
    spec_path.write_text(json.dumps(loaded.cells[0].spec.to_dict()))
    with isolated_registry():
        assert cell_main([str(spec_path), str(result_path), "--plugin", str(plugin)]) == 0
    assert "scale_travel" in json.loads(result_path.read_text())["mechanisms"] and seen


def test_cli_broken_plugin_is_one_line(tmp_path, capsys):
    path = write(tmp_path / "oops.py", "import no_such_module\n")
    assert main(["--plugin", str(path), "list"]) == 2
    err = capsys.readouterr().err
    assert f"plugin file {str(path)!r} failed to load: ModuleNotFoundError" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_suite_declares_plugin_files_and_the_command_line_loads_them(tmp_path, capsys):
    """A suite's [suite] plugins only declares files (suite files never run code); --plugin loads them, given
    before or after `run`, and a broken one is one error line naming it."""
    plugin = write(tmp_path / "suite_plugin.py", SCALE.format(name="scale_suite"))
    broken = write(tmp_path / "broken.py", "1 / 0\n")
    suite = tmp_path / "s.toml"
    body = '[model]\npreset = "zoo_s32"\n[budget]\nmetric = "none"\n[grid]\nmechanism = ["scale_suite", "global"]\n'
    suite.write_text('[suite]\nplugins = ["suite_plugin.py"]\n' + body)
    with pytest.raises(SuiteError, match=r"needs the plugin file 'suite_plugin\.py'"):
        load_suite(suite)
    load_plugin_file(plugin)
    assert [c.mechanism for c in load_suite(suite, plugins=(plugin,)).cells] == ["scale_suite", "global"]
    assert main(["--plugin", str(broken), "run", str(suite), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"plugin file {str(broken)!r} failed to load: ZeroDivisionError" in err and err.count("\n") == 1


def test_plugin_file_mechanism_runs_in_a_worker_process(tmp_path, capsys):
    """The cells of `attn-zoo run` run in fresh processes: they load the plugin files of the command line too
    (here given before the command name, for a suite that declares the file)."""
    plugin = write(tmp_path / "worker_plugin.py", SCALE.format(name="scale_worker"))
    suite = tmp_path / "w.toml"
    suite.write_text(
        textwrap.dedent(
            """
            [suite]
            name = "w"
            plugins = ["worker_plugin.py"]
            [model]
            preset = "zoo_s32"
            dims = [12, 24, 48, 96]
            [budget]
            metric = "none"
            [measure]
            latency = false
            threads = 1
            [grid]
            mechanism = ["scale_worker"]
            """
        )
    )
    argv = ["--plugin", str(plugin), "run", str(suite), "--out", str(tmp_path), "--no-progress", "--no-plots"]
    assert main(argv) == 0, capsys.readouterr().err
    store = Store(tmp_path / "w.sqlite")
    assert store.counts() == {"ok": 1}, store.cells()[0]["reason"]
    row = store.frame().iloc[0]
    assert row["mechanism"] == "scale_worker" and row["attention_macs"] == 0 and row["params"] > 0


def test_isolated_registry_undoes_everything(tmp_path):
    before = dict(attn_zoo.list_mechanisms())
    with isolated_registry():
        load_plugin_file(write(tmp_path / "temp.py", SCALE.format(name="scale_temp")))
        assert "scale_temp" in attn_zoo.list_mechanisms()
    assert attn_zoo.list_mechanisms() == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_plugin_file(tmp_path / "temp.py") == ["scale_temp"]  # the module is reused, re-registered


def test_cli_shows_a_failed_plugin_once_as_one_line(tmp_path, monkeypatch, capsys):
    fake_distribution(
        tmp_path, "named_plugin", {"other_name": "named_cli:Scale"}, {"named_cli": SCALE.format(name="real_name")}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry._LOADED, "entry_points", False)  # as in a new process
    assert main(["check", "swin", "--only", "shape"]) == 0
    err = capsys.readouterr().err
    assert err.count("registers itself as 'real_name' but the entry point is named 'other_name'") == 1
    assert (
        err.startswith("attn-zoo: warning: plugin 'other_name' from named_plugin 0.1 (named_cli:Scale)")
        and err.count("\n") == 1
    )
    assert main(["check", "other_name"]) == 2  # the error line says why; no second warning line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown mechanism 'other_name'" in err and "use one name" in err


@pytest.mark.parametrize(
    ("text", "note"),
    [
        (UNDECORATED, "plugin file 'plain.py' registered no mechanism (Scale is a Mixer subclass without "),
        ("VALUE = 3\n", "plugin file 'plain.py' registered no mechanism (no Mixer subclass decorated with "),
    ],
)
def test_plugin_file_that_registers_nothing_is_named_when_its_mechanism_is_asked_for(tmp_path, capsys, text, note):
    plugin = write(tmp_path / "plain.py", text)
    assert main(["--plugin", str(plugin), "check", "plain"]) == 2
    err = capsys.readouterr().err
    assert "unknown mechanism 'plain'" in err and note in err and err.count("\n") == 1


def test_the_memory_worker_is_given_its_plugin_files(tmp_path):
    """The isolated memory worker rebuilds the model in a fresh process: it loads the plugin files it is
    given (by default the ones loaded here), not ones guessed from the mechanisms' sources."""
    from attn_zoo.backbone.presets import get_preset
    from attn_zoo.measure.memory import run_worker
    from attn_zoo.measure.steps import StepOptions

    plugin = write(tmp_path / "mem_plugin.py", SCALE.format(name="scale_mem"))
    config = {**get_preset("zoo_s32").to_dict(), "dims": [12, 24, 48, 96], "mixer": "scale_mem", "num_classes": 10}
    options = StepOptions(batch=1, img_size=32, num_classes=10)
    out = run_worker(config, ["fwd"], options, threads=1, plugins=[plugin])
    assert out["weights_mb"] > 0 and out["peak_mem_fwd_mb"] > 0
    with pytest.raises(RuntimeError, match="memory worker failed"):
        run_worker(config, ["fwd"], options, threads=1, plugins=[])
