"""The one dispatch table: the path a row names is the path that ran, nothing falls back, auto follows the table."""

from __future__ import annotations

import pytest
import torch

import attn_zoo
from attn_zoo.backbone.config import MixerSpec
from attn_zoo.backbone.presets import create_model
from attn_zoo.errors import BackendUnavailableError
from attn_zoo.layers import auto_table, backends
from attn_zoo.layers import neighborhood as nb
from attn_zoo.registry import PerStage

# the quick suite's knobs for the 32x32 harness
KNOBS = {
    "swin": {"window": 4},
    "iwsa": {"window": 4},
    "gcvit": {"window": 4},
    "ssa": {"r_n": PerStage((4, 2, 1, 1))},
    "global": {},
    "msda": {},
    "msa_conv": {},
}


def _model(mechanism: str, backend: str = "auto"):
    torch.manual_seed(0)
    return create_model("zoo_s32", mixer=MixerSpec(mechanism, KNOBS[mechanism]), num_classes=2, backend=backend)


@pytest.mark.parametrize("mechanism", list(KNOBS))
def test_the_recorded_paths_are_the_paths_that_ran(mechanism):
    """A spy on the dispatch (what really ran, in a training forward and backward and in an eval forward) equals
    what the model reports for its result row."""
    model = _model(mechanism)
    x = torch.randn(2, 3, 32, 32)
    with backends.recording() as ran:
        model(x).sum().backward()
    assert sorted({path for _, path, _ in ran}) == model.attention_backends()
    model.eval()
    with torch.no_grad(), backends.recording() as ran:
        model(x)
    assert ran and sorted({path for _, path, _ in ran}) == model.attention_backends()


@pytest.mark.parametrize(("mechanism", "forced"), [("swin", "sdpa"), ("ssa", "reference"), ("msda", "reference")])
def test_a_forced_path_is_the_one_that_runs(mechanism, forced):
    model = _model(mechanism, backend=forced)
    with backends.recording() as ran:
        model(torch.randn(1, 3, 32, 32))
    assert {path for _, path, _ in ran} == {forced} and model.attention_backends() == [forced]


def test_a_forced_path_that_cannot_run_fails_with_one_line():
    mixer = attn_zoo.create_mechanism("swin", 16, 2, window=4)
    mixer.set_backend("xformers")
    with pytest.raises(BackendUnavailableError) as err:
        mixer(torch.randn(1, 8, 8, 16))
    assert (
        str(err.value) == "swin: backend 'xformers' cannot run on cpu: xformers has no kernels for cpu here (CUDA only)"
    )


def test_availability_means_the_kernel_ran(monkeypatch, fresh_dispatch):
    """A path whose kernel fails on the tiny probe is not available, even though its module imports."""
    broken = backends.Path(lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("no kernel for this CPU")))
    monkeypatch.setitem(backends.TABLE["cpu"]["dense"], "sdpa", broken)
    reason = backends.unavailable_reason("sdpa", "cpu", "dense")
    assert reason == "its kernel failed on a tiny input (RuntimeError: no kernel for this CPU)"
    mixer = attn_zoo.create_mechanism("global", 16, 2, backend="sdpa")
    with pytest.raises(BackendUnavailableError, match=r"^global: backend 'sdpa' cannot run on cpu: its kernel failed"):
        mixer(torch.randn(1, 4, 4, 16))
    mixer.set_backend("auto")  # auto skips the broken path and says which one it took
    mixer(torch.randn(1, 4, 4, 16))
    assert mixer.last_backend == "reference"


def test_auto_with_no_path_that_runs_fails_naming_why(monkeypatch, fresh_dispatch):
    for name in ("sdpa", "reference"):
        monkeypatch.setitem(backends.TABLE["cpu"]["dense"], name, backends.Path(lambda *a, **kw: 1 / 0))
    with pytest.raises(BackendUnavailableError) as err:
        attn_zoo.create_mechanism("global", 16, 2)(torch.randn(1, 4, 4, 16))
    message = str(err.value)
    assert message.startswith("global: no attention path runs on cpu (") and "\n" not in message
    failed = "its kernel failed on a tiny input (ZeroDivisionError: division by zero)"
    assert f"sdpa: {failed}" in message and f"reference: {failed}" in message
    assert "xformers: xformers has no kernels for cpu here (CUDA only)" in message


def test_natten_without_a_kernel_for_the_call_is_an_error_not_a_fallback(monkeypatch, fresh_dispatch):
    class NoKernel:
        HAS_LIBNATTEN = False

        @staticmethod
        def na2d(*args, **kwargs):
            raise NotImplementedError("no backend for this problem")

    monkeypatch.setattr(nb, "_natten_tried", True)
    monkeypatch.setattr(nb, "_natten_error", None)
    monkeypatch.setattr(nb, "_natten_module", NoKernel)
    q = torch.randn(1, 1, 6, 6, 8)
    with pytest.raises(BackendUnavailableError, match="natten has no kernel for this call"):
        nb._natten_na2d(q, q, q, (3, 3), (1, 1), 0.5)


def _row_calls(device_type: str, op: str):
    for row in auto_table.load()[device_type][op]["rows"]:
        call = {k: row[k] for k in ("n_q", "n_k", "head_dim", "v_dim", "seqs", "bias", "grad", "border") if k in row}
        if op == "neighborhood":
            call["kernel"] = tuple(row["kernel"])
        yield row, call


@pytest.mark.parametrize("op", ["dense", "neighborhood"])
def test_auto_takes_the_fastest_path_of_the_shape_table(op):
    rows = list(_row_calls("cpu", op))
    assert rows, "the shape table has CPU rows"
    offered = tuple(backends.TABLE["cpu"][op])
    for row, call in rows:
        usable = [p for p in row["ms"] if backends.unavailable_reason(p, "cpu", op) is None]
        fastest = min(usable, key=lambda p: row["rel"][p])
        assert backends.select("auto", offered, "cpu", op=op, owner="test", call=call) == fastest, row


def test_the_shape_table_says_where_it_comes_from():
    provenance = auto_table.load()["provenance"]
    for key in ("command", "machine", "date", "commit", "threads"):
        assert provenance.get(key), key
    assert auto_table.default_order("dense", "cuda")  # the CUDA section the lead updates from a GPU run


def test_cuda_auto_follows_the_per_mechanism_order_of_the_table():
    """No CUDA rows yet: each mechanism's own list in the CUDA section (measured on an H200) decides, exhaustively."""
    section = auto_table.load()["cuda"]
    for op in ("dense", "neighborhood"):
        for mechanism, order in section[op]["by_mechanism"].items():
            offered = attn_zoo.list_mechanisms()[mechanism].backends
            got = auto_table.auto_order(op, "cuda", {"n_q": 49, "n_k": 49, "head_dim": 32}, offered, mechanism)
            assert got == tuple(p for p in order if p in offered), mechanism  # flex, xformers: not in the lists
    assert auto_table.auto_order("dense", "cuda", {}, ("reference", "sdpa"), "a_plugin") == ("sdpa", "reference")
