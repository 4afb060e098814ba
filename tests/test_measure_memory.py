"""Peak memory: a model with 4x the activations reports clearly more; the isolated worker sees weights,
gradients and optimizer state; the CUDA path skips without CUDA."""

from __future__ import annotations

import pytest
import torch
from conftest import requires_cuda
from torch import nn

from attn_zoo.backbone.presets import resolve_config
from attn_zoo.errors import ConfigError
from attn_zoo.measure.memory import measure_memory, reset_peak_rss, resolve_method, weights_mb
from attn_zoo.measure.steps import StepOptions

requires_rss_reset = pytest.mark.skipif(not reset_peak_rss(), reason="needs Linux's resettable peak RSS")


class Wide(nn.Module):
    """Image -> logits through a stack of wide per-pixel MLPs: activations grow with the batch, weights do not."""

    def __init__(self, width: int = 256, depth: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 1)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(width, width, 1), nn.GELU()) for _ in range(depth)])
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


@requires_rss_reset
def test_four_times_the_activations_reports_clearly_more():
    """The default CPU method (an isolated worker): 4x the batch, 4x the activation memory, weights unchanged."""
    config = resolve_config("zoo_s32", dims=(24, 48, 96, 192), img_size=128, num_classes=10, mixer="swin")
    act = {}
    for batch in (2, 8):
        options = StepOptions(batch=batch, img_size=128, num_classes=10)
        out = measure_memory(None, ["fwd"], options, config=config.to_dict(), threads=1)
        act[batch] = out["peak_mem_fwd_mb"] - out["weights_mb"]
    stage0_map = 2 * 64 * 64 * 24 * 4 / 2**20  # one stage-0 token map at batch 2, MiB
    assert act[2] > stage0_map
    assert act[8] > 3 * act[2], act


@requires_rss_reset
def test_in_process_rss_grows_with_the_activations():
    """The in-process method: noisier (the heap keeps freed chunks), but 3 more batches show."""
    model = Wide()
    peaks = {}
    for batch in (2, 8):
        options = StepOptions(batch=batch, img_size=64, num_classes=10)
        peaks[batch] = measure_memory(model, ["fwd"], options, method="rss")["peak_mem_fwd_mb"]
    activation = 2 * 256 * 64 * 64 * 4 / 2**20  # one (B=2) activation map in MiB; two are alive at the peak
    assert peaks[2] > activation
    assert peaks[8] - peaks[2] > 2.5 * activation  # 3 more batches of at least one live map each


@requires_rss_reset
def test_worker_counts_weights_gradients_and_optimizer_state():
    config = resolve_config("zoo_s32", dims=(24, 48, 96, 192), num_classes=10)
    options = StepOptions(batch=2, img_size=32, num_classes=10)
    out = measure_memory(None, ["fwd", "train"], options, method="worker", config=config.to_dict(), threads=1)
    assert set(out) == {"weights_mb", "peak_mem_fwd_mb", "peak_mem_train_mb"}
    weights = out["weights_mb"]
    assert out["peak_mem_fwd_mb"] >= weights  # the measured copy of the weights is part of the peak
    # a training step holds weights, gradients and AdamW's two moments at once: at least 4x the weights
    assert out["peak_mem_train_mb"] >= 4 * weights > out["peak_mem_fwd_mb"]


def test_weights_mb_counts_parameters_and_buffers():
    model = nn.BatchNorm2d(256)  # 512 parameters and 512 + 1 buffers
    assert weights_mb(model) == pytest.approx((512 * 4 + 512 * 4 + 8) / 2**20)


def test_methods_are_checked_against_the_device():
    assert resolve_method("auto", torch.device("cpu")) == "worker"
    with pytest.raises(ConfigError, match="memory method 'cuda' does not measure device cpu"):
        resolve_method("cuda", torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown; allowed: auto, cuda, worker, rss"):
        resolve_method("psutil", torch.device("cpu"))
    with pytest.raises(ConfigError, match="needs the model's config"):
        measure_memory(Wide(), ["fwd"], StepOptions(img_size=8), method="worker")


@requires_cuda
def test_cuda_peak_grows_with_batch():  # pragma: no cover - needs CUDA
    model = Wide()
    small = measure_memory(model, ["fwd"], StepOptions(batch=2, img_size=64, num_classes=10), "cuda")
    large = measure_memory(model, ["fwd"], StepOptions(batch=8, img_size=64, num_classes=10), "cuda")
    assert large["peak_mem_fwd_mb"] > 2 * small["peak_mem_fwd_mb"]
