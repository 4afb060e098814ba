"""Paired runs (common random numbers): for one seed, every mechanism sees the same batches, after augmentation
and mixup, and the modules outside the mixers start from the same weights where their shapes agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attn_zoo.backbone.config import MixerSpec
from attn_zoo.backbone.harness import Backbone
from attn_zoo.backbone.presets import resolve_config
from attn_zoo.data.config import DataConfig
from attn_zoo.data.loaders import create_data
from attn_zoo.data.seeds import seeded_rng, stream_seed
from attn_zoo.train.pairing import load_predictions, save_predictions, share_init, shared_modules
from attn_zoo.train.recipe import TrainConfig, fit, seed_everything

TINY = {"dims": [12, 24, 48, 96], "depths": [1, 1, 1, 1]}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(mechanism: str, **knobs) -> Backbone:
    config = resolve_config({"preset": "zoo_s32", **TINY})
    return Backbone(config.replace(mixer=MixerSpec(mechanism, knobs), num_classes=4, in_chans=1))


class Recorder(nn.Module):
    """Passes images to ``inner`` and keeps a copy of every batch it is given (after mixup)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


def batches_seen(mechanism: str, seed: int, **knobs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Train ``mechanism`` for 5 steps (2 epochs of 2 steps, then one) with light augmentation and mixup;
    returns the images the model saw and the loader's targets, epoch by epoch."""
    data = create_data(
        DataConfig(source="synthetic", train_size=32, test_size=8, augment="light"),
        img_size=32,
        batch_size=16,
        seed=seed,
    )
    seed_everything(seed)
    model = Recorder(tiny(mechanism, **knobs))  # building the model draws from the global generators
    torch.rand(int(1000 * len(mechanism)))  # and so may anything else, a different amount per mechanism
    config = TrainConfig(steps=5, batch_size=16, mixup_alpha=0.8, cutmix_alpha=1.0, amp=False)
    fit(model, data.train_loader(), config, num_classes=4)
    loader = data.train_loader()
    targets = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        data.train_set.set_epoch(epoch)
        targets += [labels for _, labels in loader]
    return model.seen, targets[:5]


def test_two_mechanisms_see_identical_batches_for_a_seed():
    images_a, targets_a = batches_seen("global", seed=3)
    images_b, targets_b = batches_seen("swin", seed=3, window=4)
    assert len(images_a) == len(images_b) == 5
    for a, b in zip(images_a, images_b):
        assert torch.equal(a, b)
    for a, b in zip(targets_a, targets_b):
        assert torch.equal(a, b)
    # the batches are really augmented and mixed: another seed gives other images
    images_c, _ = batches_seen("global", seed=4)
    assert not torch.equal(images_a[0], images_c[0])


def test_augmentation_differs_between_epochs_and_images():
    data = create_data(
        DataConfig(source="synthetic", train_size=32, test_size=8, augment="light"), img_size=32, batch_size=8, seed=1
    )
    first = data.train_set[0][0]
    data.train_set.set_epoch(1)
    assert not torch.equal(first, data.train_set[0][0])
    data.train_set.set_epoch(0)
    torch.rand(10)  # the global generators do not matter
    assert torch.equal(first, data.train_set[0][0])


def test_shared_modules_start_alike_mixers_do_not():
    seed_everything(0)
    a = tiny("global")
    seed_everything(0)
    torch.rand(12345)
    b = tiny("swin", window=4)
    share_init(a, 7)
    share_init(b, 7)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    shared = {n for n, _ in shared_modules(a)}
    assert {
        "stem.proj",
        "head",
        "norm",
        "stages.0.blocks.0.mlp.fc1",
        "stages.1.downsample.conv",
        "stages.0.peg.proj",
    } <= shared
    assert not any(".mixer" in name for name in shared)
    names = [n for n in pa if n in pb and ".mixer." not in n and pa[n].shape == pb[n].shape]
    assert len(names) > 20
    for name in names:
        assert torch.equal(pa[name], pb[name]), name
    assert not torch.equal(pa["stages.0.blocks.0.mixer.qkv.weight"], pb["stages.0.blocks.0.mixer.qkv.weight"])
    # another seed: other weights
    c = tiny("global")
    share_init(c, 8)
    assert not torch.equal(pa["head.weight"], dict(c.named_parameters())["head.weight"])


def test_shared_init_keeps_the_model_s_distribution():
    model = nn.Sequential(nn.Linear(512, 512), nn.LayerNorm(512), nn.Conv2d(64, 64, 3))
    share_init(model, 0)
    linear, norm, conv = model
    w = linear.weight.detach()
    assert w.std().item() == pytest.approx(0.02, rel=0.02)  # timm's trunc_normal_(std=0.02), cut at +-2
    assert w.abs().max().item() < 0.1 and torch.all(linear.bias == 0)
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    bound = 1 / (64 * 9) ** 0.5  # Conv2d's own kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    cw = conv.weight.detach()
    assert cw.abs().max().item() <= bound and cw.abs().max().item() > 0.95 * bound


def test_seeded_rng_restores_the_global_generators():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    with seeded_rng(stream_seed(0, "x")):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with seeded_rng(stream_seed(0, "x")):
        assert torch.equal(torch.rand(3), inside)
    assert stream_seed(0, "augment", 1, 2) != stream_seed(0, "augment", 2, 1)


def test_predictions_round_trip_compactly(tmp_path):
    pred, target = np.array([0, 3, 9, 9]), np.array([0, 3, 2, 9])
    path = save_predictions(tmp_path / "p.npz", pred, target)
    with np.load(path) as data:
        assert data["pred"].dtype == np.uint8
    got_pred, got_target = load_predictions(path)
    assert got_pred.tolist() == [0, 3, 9, 9] and got_target.tolist() == [0, 3, 2, 9]
