"""measure_model: the metric columns a cell writes, the [measure] table's checks, the caller's model untouched,
the efficiency numbers, and the environment recorded with every row."""

from __future__ import annotations

import re

import pytest
import torch

from attn_zoo.backbone import create_model
from attn_zoo.backbone.presets import resolve_config
from attn_zoo.errors import ConfigError
from attn_zoo.grid.suite import SuiteError, load_suite
from attn_zoo.measure import efficiency as eff
from attn_zoo.measure.environment import environment
from attn_zoo.measure.latency import LATENCY_KEYS
from attn_zoo.measure.memory import reset_peak_rss
from attn_zoo.measure.profile import MEASURE_DEFAULTS, METRIC_DOCS, measure_model, resolve_measure

CHEAP = {
    "threads": 1,
    "warmup": 1,
    "repeats": 2,
    "forward_backward": True,
    "train_step": True,
    "memory_method": "rss",
    "erf": True,
    "erf_images": 1,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTN_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(eff, "_MEMO", {})
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


def tiny(mechanism="global"):
    return create_model(resolve_config("zoo_s32", dims=(12, 24, 48, 96), num_classes=10, mixer=mechanism))


def documented(name: str) -> bool:
    for pattern in METRIC_DOCS:
        regex = re.escape(pattern).replace(re.escape("{mode}"), "(fwd|fwdbwd|train)")
        if re.fullmatch(regex, name):
            return True
    return False


@pytest.mark.skipif(not reset_peak_rss(), reason="needs Linux's resettable peak RSS")
def test_measure_model_writes_every_documented_column(tmp_path):
    model = tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    artifacts: dict[str, str] = {}
    metrics = measure_model(model, model.config, CHEAP, "cpu", artifact_dir=tmp_path, artifacts=artifacts)
    for mode in ("fwd", "fwdbwd", "train"):
        for key in LATENCY_KEYS:
            assert f"latency_{mode}_{key}" in metrics
        assert metrics[f"latency_{mode}_repeats"] == 2 and metrics[f"latency_{mode}_median_ms"] > 0
    expected = {"params", "macs", "flops", "attention_macs", "attention_macs_formula", "tokens", "latency_median_ms"}
    expected |= {"throughput_img_s", "throughput_train_img_s", "weights_mb", "peak_mem_fwd_mb", "peak_mem_train_mb"}
    expected |= {"act_mem_fwd_mb", "gflops_achieved", "matmul_peak_gflops", "peak_fraction", "erf_r50", "erf_r90"}
    expected |= {"train_gflops_achieved", "train_peak_fraction"}
    assert expected <= set(metrics)
    undocumented = [k for k in metrics if not documented(k)]
    assert not undocumented, f"metrics missing from METRIC_DOCS / docs/measurement.md: {undocumented}"
    # every value a number, but the timed calls of each mode (a list the store keeps as samples)
    assert all(isinstance(v, float | int) for k, v in metrics.items() if not k.endswith("_times_ms"))
    assert [len(metrics[f"latency_{m}_times_ms"]) for m in ("fwd", "fwdbwd", "train")] == [2, 2, 2]
    assert metrics["latency_median_ms"] == metrics["latency_fwd_median_ms"]
    assert metrics["attention_macs_formula"] == metrics["attention_macs"]
    assert metrics["tokens"] == 16 * 16
    assert metrics["flops"] == 2 * metrics["macs"]
    assert metrics["peak_fraction"] == pytest.approx(metrics["gflops_achieved"] / metrics["matmul_peak_gflops"])
    assert metrics["gflops_achieved"] == pytest.approx(metrics["flops"] / metrics["latency_fwd_median_ms"] / 1e6)
    # a training step: forward + backward = 3 x the forward flops (6 x MACs) per image
    train_gflops = 3 * metrics["flops"] / metrics["latency_train_median_ms"] / 1e6
    assert metrics["train_gflops_achieved"] == pytest.approx(train_gflops)
    assert metrics["train_peak_fraction"] == pytest.approx(train_gflops / metrics["matmul_peak_gflops"])
    assert artifacts == {"erf_untrained": str(tmp_path / "erf_untrained.npy")}
    # every measurement ran on copies: the caller's weights and mode are as they were
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_measure_model_only_counts_when_asked():
    model = tiny("swin")
    metrics = measure_model(model, model.config, {"latency": False, "memory": False, "threads": 1}, "cpu")
    assert {"params", "macs", "attention_macs", "tokens"} <= set(metrics)
    assert not any(k.startswith(("latency", "peak_mem", "gflops")) for k in metrics)


def test_measure_model_refuses_cuda_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = tiny()
    with pytest.raises(ConfigError, match=r"measure\.device = 'cuda', but torch sees no CUDA device here"):
        measure_model(model, model.config, {"device": "cuda"}, "cuda")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"repeat": 3}, "measure.repeat: unknown key; allowed: device, threads"),
        ({"latency": "yes"}, "measure.latency = 'yes': must be true or false"),
        ({"batch_size": 1.5}, "measure.batch_size = 1.5: must be an integer"),
        ({"dtype": "fp8"}, "measure.dtype = 'fp8': allowed: float32, bfloat16, float16"),
        ({"device": "tpu"}, "measure.device = 'tpu': allowed: cpu, cuda, cuda:N"),
        ({"min_repeats": 9, "max_repeats": 3}, "measure.max_repeats = 3: must be >= min_repeats (9)"),
        ({"target_ci": 2.0}, "measure.target_ci = 2.0: must be in [0, 1)"),
        ({"memory_method": "psutil"}, "measure.memory_method = 'psutil': allowed: auto, cuda, worker, rss"),
    ],
)
def test_measure_table_errors_name_key_value_and_allowed(table, message):
    with pytest.raises(ConfigError) as info:
        resolve_measure(table)
    assert message in str(info.value)


def test_measure_table_defaults_and_int_for_float():
    spec = resolve_measure({"time_cap_s": 5})
    assert spec.time_cap_s == 5.0 and isinstance(spec.time_cap_s, float)
    assert {k: v for k, v in spec.to_dict().items() if k != "time_cap_s"} == {
        k: v for k, v in MEASURE_DEFAULTS.items() if k != "time_cap_s"
    }


def test_suite_measure_errors_name_the_file(tmp_path):
    suite = tmp_path / "bad.toml"
    suite.write_text('[model]\npreset = "zoo_s32"\n[measure]\ndtype = "fp8"\n[grid]\nmechanism = ["global"]\n')
    with pytest.raises(SuiteError) as info:
        load_suite(suite)
    assert str(suite) in str(info.value) and "measure.dtype = 'fp8'" in str(info.value)


def test_matmul_peak_is_measured_once_and_cached_on_disk(monkeypatch, tmp_path):
    calls = []
    real = eff.measure_latency

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(eff, "measure_latency", counting)
    first = eff.matmul_peak_gflops("cpu", n=256)
    assert first > 0 and len(calls) == 1
    assert eff.matmul_peak_gflops("cpu", n=256) == first and len(calls) == 1  # memory
    monkeypatch.setattr(eff, "_MEMO", {})
    assert eff.matmul_peak_gflops("cpu", n=256) == first and len(calls) == 1  # disk
    assert eff.cache_path() == tmp_path / "cache" / "matmul_peak.json"
    assert eff.efficiency(2e9, 4, 100.0, 160.0) == {
        "gflops_achieved": 80.0,
        "matmul_peak_gflops": 160.0,
        "peak_fraction": 0.5,
    }


def test_environment_names_versions_device_threads_dtype_commit():
    env = environment("cpu", "bfloat16")
    for key in ("torch", "timm", "natten", "xformers", "device", "device_name", "threads", "dtype", "commit"):
        assert key in env
    assert env["dtype"] == "bfloat16" and env["threads"] == torch.get_num_threads() and env["device"] == "cpu"


@pytest.mark.skipif(not reset_peak_rss(), reason="needs Linux's resettable peak RSS")
def test_largest_batch_under_a_memory_cap():
    from attn_zoo.measure.profile import max_batch_throughput
    from attn_zoo.measure.steps import StepOptions

    model = tiny()
    spec = resolve_measure({"max_batch_mem_mb": 1e6, "warmup": 0, "repeats": 1})
    options = StepOptions(batch=1, img_size=32, num_classes=10)
    out = max_batch_throughput(model, options, torch.device("cpu"), spec, limit=4)
    assert out["max_batch"] == 4 and out["throughput_max_batch_img_s"] > 0 and out["peak_mem_max_batch_mb"] > 0
    spec = resolve_measure({"max_batch_mem_mb": 1e-3})
    with pytest.warns(RuntimeWarning, match="batch 1 already exceeds max_batch_mem_mb"):
        assert max_batch_throughput(model, options, torch.device("cpu"), spec) == {"max_batch": 0.0}


def test_training_efficiency_of_a_trained_cell(monkeypatch):
    monkeypatch.setattr(eff, "matmul_peak_gflops", lambda device, dtype: 80.0)
    row = {"train_macs": 3e12, "train_time_s": 150.0}
    got = eff.training_efficiency(row, "cpu", "float32")
    assert got == {"train_gflops_achieved": 40.0, "matmul_peak_gflops": 80.0, "train_peak_fraction": 0.5}
    assert eff.training_efficiency({"train_time_s": 1.0}) == {}


def test_environment_commit_can_be_named_for_a_copy_without_git(monkeypatch):
    from attn_zoo.measure.environment import environment

    monkeypatch.setenv("ATTN_ZOO_COMMIT", "abc1234")
    assert environment("cpu")["commit"] == "abc1234"
