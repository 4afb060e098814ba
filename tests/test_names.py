"""The one generic registry (issue 18, item 4): each kind keeps its own error message; built-ins load once."""

from __future__ import annotations

import pytest

from attn_zoo.backbone.presets import get_preset, list_presets, register_preset
from attn_zoo.data.sources import SOURCES
from attn_zoo.errors import ConfigError, UnknownNameError
from attn_zoo.grid.executors import create_executor, executor_names
from attn_zoo.names import Registry


def test_unknown_names_keep_each_kind_s_message():
    with pytest.raises(UnknownNameError, match=r"^unknown preset 'nope'; allowed: dilateformer_t, gcvit_xxt, "):
        get_preset("nope")
    with pytest.raises(ConfigError) as err:
        create_executor("nope")
    assert str(err.value) == f"executor 'nope' unknown; allowed: {', '.join(executor_names())}"
    with pytest.raises(UnknownNameError, match=r"^unknown data source 'nope'; allowed: cifar10, cifar100, "):
        SOURCES["nope"]


def test_a_taken_preset_name_is_refused_and_the_same_function_is_not():
    fn = register_preset("swin_t")  # loads the built-ins first: a plugin cannot take their names unnoticed
    with pytest.raises(ValueError, match=r"^preset 'swin_t' is already registered$"):
        fn(lambda: get_preset("zoo_s32"))
    assert "swin_t" in list_presets()


def test_load_runs_once_on_the_first_lookup_and_keeps_registration_order():
    calls = []
    registry: Registry[int] = Registry("thing", load=lambda: calls.append(registry.add("b", 2)))
    registry.add("c", 3)
    assert calls == []  # adding does not load
    assert list(registry) == ["c", "b"] and registry["b"] == 2 and len(registry) == 2 and calls == [2]
    assert registry.get("x") is None and "x" not in registry and calls == [2]
    with pytest.raises(UnknownNameError) as err:
        registry["x"]
    assert str(err.value) == "unknown thing 'x'; allowed: b, c"
    unique: Registry[object] = Registry("thing", unique=True)
    unique["a"] = first = object()
    unique["a"] = first  # the same object again is no conflict
    with pytest.raises(ValueError, match=r"^thing 'a' is already registered$"):
        unique["a"] = object()
    del unique["a"]
    assert dict(unique) == {}
