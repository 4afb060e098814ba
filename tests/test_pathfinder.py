"""Tests of the generated Pathfinder task (attn_zoo.data.pathfinder)."""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import attn_zoo.data.pathfinder as pf
from attn_zoo.errors import ConfigError, UnknownNameError

DIFFICULTIES = list(pf.DIFFICULTIES)


def _sha(images: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of boolean masks (n, h, w): each pixel gets its component's
    smallest flat index (background: a sentinel). Minimum propagation until nothing changes; fine
    for the small images here and independent of the code under test."""
    _, h, w = mask.shape
    sentinel = h * w
    lab = np.where(mask, np.arange(h * w).reshape(1, h, w), sentinel)
    while True:
        padded = np.pad(lab, ((0, 0), (1, 1), (1, 1)), constant_values=sentinel)
        new = lab.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                new = np.minimum(new, padded[:, 1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx])
        new = np.where(mask, new, sentinel)
        if np.array_equal(new, lab):
            return lab
        lab = new


def _best_threshold_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the best rule ``x > t`` or ``x <= t``: how well one feature alone predicts y."""
    order = np.argsort(x, kind="stable")
    ys = y[order]
    below_pos = np.cumsum(ys)  # positives at or below each cut
    k = np.arange(1, len(y) + 1)
    acc = ((k - below_pos) + (ys.sum() - below_pos)) / len(y)  # predict 0 below, 1 above
    return float(max(acc.max(), 1 - acc.min()))


# --- the fixed tables ------------------------------------------------------------------------------------


def test_direction_table_is_far_from_rounding_ties() -> None:
    # The integer step table is rounded from float cosines; if no entry lies near .5, every libm (a few
    # ulp apart at most) gives the same table, hence the same images.
    frac = np.abs(pf._STEP_FLOAT - np.floor(pf._STEP_FLOAT) - 0.5)
    assert frac.min() > 1e-6
    lengths = np.hypot(*pf._STEPS.T) / pf._Q
    assert np.allclose(lengths, pf.SEGMENT_LENGTH, atol=2 / pf._Q)


# --- determinism, balance, shapes -----------------------------------------------------------------------

GOLDEN = {
    "easy": "9e6fd56610debe48e9736d292b980dacad603a7284a204821be17618489ca045",
    "medium": "d796550aaae4c15d9dd81e650f697d85d39cf9a4c39cf240a4ed67eb72d850fc",
    "hard": "4d526277a715cfeaca3f9c95fdbb45912b62cc5f301d833ada8a04d9b5758dc0",
}


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_golden_bytes(difficulty: str) -> None:
    # Pins the output across machines and releases: a change here needs a GENERATOR_VERSION bump.
    assert pf.GENERATOR_VERSION == 1
    images, labels = pf.generate_pathfinder(8, difficulty=difficulty, seed=0)
    assert _sha(images, labels) == GOLDEN[difficulty]


def test_same_seed_same_bytes_and_prefix_property() -> None:
    a_img, a_lab = pf.generate_pathfinder(10, seed=3)
    b_img, b_lab = pf.generate_pathfinder(10, seed=3)
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    p_img, p_lab = pf.generate_pathfinder(5, seed=3)
    assert np.array_equal(a_img[:5], p_img) and np.array_equal(a_lab[:5], p_lab)


def test_different_seeds_differ() -> None:
    a, _ = pf.generate_pathfinder(6, seed=0)
    b, _ = pf.generate_pathfinder(6, seed=1)
    assert all(not np.array_equal(x, y) for x, y in zip(a, b))
    assert len({img.tobytes() for img in a}) == len(a)  # and images within a set differ too


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**40), start=st.integers(0, 3000), n=st.integers(1, 5))
def test_an_image_depends_only_on_seed_and_index(seed: int, start: int, n: int) -> None:
    window = pf.sample_layouts(n, seed=seed, start=start)
    one = pf.sample_layouts(1, seed=seed, start=start + n - 1)[0]
    last = window[-1]
    assert last.label == one.label
    assert np.array_equal(last.paths, one.paths) and np.array_equal(last.markers, one.markers)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 64])
def test_labels_are_balanced(n: int) -> None:
    _, labels = pf.generate_pathfinder(n, seed=5)
    assert labels.dtype == np.int64 and labels.shape == (n,)
    assert set(labels.tolist()) <= {0, 1}
    assert labels.sum() == n // 2 or (n % 2 == 1 and labels.sum() == n // 2 + 1)
    assert np.all(labels[0 : n - n % 2 : 2] + labels[1 : n - n % 2 : 2] == 1)  # one positive per pair


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_shapes_and_dtypes(difficulty: str, resolution: int) -> None:
    images, labels = pf.generate_pathfinder(4, resolution=resolution, difficulty=difficulty, seed=1)
    assert images.shape == (4, resolution, resolution) and images.dtype == np.uint8
    assert labels.shape == (4,) and labels.dtype == np.int64
    assert images.max() == 255 and (images == 0).mean() > 0.5  # white ink on a mostly black canvas


def test_higher_resolution_draws_the_same_scene() -> None:
    small, _ = pf.generate_pathfinder(6, resolution=32, difficulty="medium", seed=2)
    big, _ = pf.generate_pathfinder(6, resolution=128, difficulty="medium", seed=2)
    pooled = big.reshape(6, 32, 4, 32, 4).astype(float).mean((2, 4))
    for s, b in zip(small.astype(float), pooled):
        assert np.corrcoef(s.ravel(), b.ravel())[0, 1] > 0.85
    # Strokes and markers scale with the segments and the anti-aliasing approximates area coverage,
    # so the mean intensity does not depend on the resolution (the count of nonzero pixels does: the
    # one-pixel ramp is a larger share of a thin stroke).
    assert abs(small.mean() / big.mean() - 1) < 0.02


def test_bad_arguments_are_named() -> None:
    with pytest.raises(UnknownNameError, match="difficulty"):
        pf.generate_pathfinder(2, difficulty="nightmare")
    with pytest.raises(ConfigError, match="resolution"):
        pf.generate_pathfinder(2, resolution=16)
    with pytest.raises(ConfigError, match="seed"):
        pf.generate_pathfinder(2, seed=-1)
    with pytest.raises(UnknownNameError, match="split"):
        pf.PathfinderDataset("dev", n=2)
    with pytest.raises(ConfigError, match="channels"):
        pf.PathfinderDataset("train", n=2, channels=2)


# --- geometry and labels --------------------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_layout_geometry(difficulty: str) -> None:
    spec = pf.DIFFICULTIES[difficulty]
    layouts = pf.sample_layouts(200, difficulty=difficulty, seed=4)
    for lay in layouts:
        k = len(lay.paths)
        assert spec.min_paths <= k <= spec.max_paths
        assert lay.paths.shape == (k, spec.segments + 1, 2)
        steps = np.diff(lay.paths, axis=1)
        assert np.allclose(np.hypot(*steps.T), pf.SEGMENT_LENGTH, atol=0.01)
        heading = np.arctan2(steps[..., 1], steps[..., 0])
        turn = np.abs((np.diff(heading, axis=1) + np.pi) % (2 * np.pi) - np.pi)
        assert turn.max() <= math.radians(pf.MAX_TURN * 360 / 256) + 0.01  # bounded curvature
        assert lay.paths.min() >= pf.MARGIN and lay.paths.max() <= pf.BASE_RESOLUTION - pf.MARGIN
        if lay.label:  # both markers on the two ends of path 0
            assert np.array_equal(lay.markers, lay.paths[0][[0, -1]])
        else:  # one marker on the start of path 0, one on the start of path 1
            assert np.array_equal(lay.markers, np.stack([lay.paths[0][0], lay.paths[1][0]]))
            j_a, j_b = lay.shared
            assert 1 <= j_a <= spec.max_shared and 1 <= j_b <= spec.max_shared
    assert np.mean([lay.redraws for lay in layouts]) < 1.0


@pytest.mark.parametrize(("difficulty", "resolution", "n"), [(d, 32, 300) for d in DIFFICULTIES] + [("hard", 64, 40)])
def test_label_is_connectivity_of_the_ink(difficulty: str, resolution: int, n: int) -> None:
    layouts = pf.sample_layouts(n, difficulty=difficulty, seed=6)
    images = pf.render_layouts(layouts, resolution)
    comp = _components(images > 0)
    scale = resolution / pf.BASE_RESOLUTION
    connected = []
    for img, lab, lay in zip(images, comp, layouts):
        (x0, y0), (x1, y1) = np.floor(lay.markers * scale).astype(int)
        assert img[y0, x0] == 255 and img[y1, x1] == 255  # a marker centre is solid ink
        connected.append(lab[y0, x0] == lab[y1, x1])
    labels = np.array([lay.label for lay in layouts])
    assert np.array_equal(np.array(connected), labels == 1)


def test_crossings_do_occur() -> None:
    # The rules allow distractors to cross marked paths; make sure the data really contains that,
    # otherwise the connectivity test above would be too easy to pass.
    layouts = pf.sample_layouts(200, difficulty="medium", seed=7)
    images = pf.render_layouts(layouts)
    comp = _components(images > 0)
    merged = 0
    for lab, lay in zip(comp, layouts):
        x0, y0 = np.floor(lay.markers[0]).astype(int)
        ink_of_marked = (lab == lab[y0, x0]).sum()
        alone = pf.render_layouts([_only_first_path(lay)])[0] > 0
        merged += ink_of_marked > alone.sum()
    assert merged > 20


def _only_first_path(lay: pf.PathfinderLayout) -> pf.PathfinderLayout:
    """The layout with only path 0 and the markers on it (for measuring how much ink path 0 alone has)."""
    markers = lay.markers if lay.label else lay.markers[[0, 0]]
    return pf.PathfinderLayout(lay.label, lay.paths[:1], markers, (0, 0), (0, 0), 0)


# --- no local shortcut ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("difficulty", "n"), [("easy", 2000), ("hard", 1000)])
def test_classes_match_in_simple_statistics(difficulty: str, n: int) -> None:
    layouts = pf.sample_layouts(n, difficulty=difficulty, seed=11)
    images = pf.render_layouts(layouts).astype(np.float64)
    y = np.array([lay.label for lay in layouts])
    pos, neg = y == 1, y == 0
    assert pos.sum() == neg.sum() == n // 2

    ink = images.sum((1, 2))
    assert abs(ink[pos].mean() / ink[neg].mean() - 1) < 0.03
    assert _best_threshold_accuracy(ink, y) < 0.58

    n_paths = np.array([len(lay.paths) for lay in layouts])
    assert abs(n_paths[pos].mean() - n_paths[neg].mean()) < 0.15
    segments = {lay.paths.shape[1] - 1 for lay in layouts}
    assert segments == {pf.DIFFICULTIES[difficulty].segments}

    markers = np.stack([lay.markers for lay in layouts])
    dist = np.hypot(*(markers[:, 0] - markers[:, 1]).T)
    assert abs(dist[pos].mean() / dist[neg].mean() - 1) < 0.04
    assert _best_threshold_accuracy(dist, y) < 0.57

    # Angle between the direction in which the marked path leaves each marker and the direction to
    # the other marker: a positive's path heads for the other marker, so must a negative's.
    angles = []
    for lay in layouts:
        from_0 = lay.paths[0]
        from_1 = lay.paths[0][::-1] if lay.label else lay.paths[1]
        total = 0.0
        for path, here, there in (
            (from_0, lay.markers[0], lay.markers[1]),
            (from_1, lay.markers[1], lay.markers[0]),
        ):
            assert np.array_equal(path[0], here)
            v, w = path[1] - path[0], there - here
            total += abs(math.remainder(math.atan2(v[1], v[0]) - math.atan2(w[1], w[0]), 2 * math.pi))
        angles.append(total)
    assert _best_threshold_accuracy(np.array(angles), y) < 0.57


# --- dataset, cache and pictures -----------------------------------------------------------------------


def test_splits_are_disjoint_and_train_is_the_generator_stream() -> None:
    sets = {s: pf.PathfinderDataset(s, n=150, seed=0) for s in pf.SPLITS}
    hashes = {s: {img.tobytes() for img in ds.images} for s, ds in sets.items()}
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    images, labels = pf.generate_pathfinder(150, seed=0)
    assert np.array_equal(sets["train"].images, images) and sets["train"].targets == labels.tolist()


def test_dataset_items_and_timm_transforms() -> None:
    from timm.data import create_transform

    grey = pf.PathfinderDataset("val", n=4, seed=0)
    img, target = grey[0]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (32, 32)
    assert target == grey.targets[0] and len(grey) == 4
    assert grey.classes == ["disconnected", "connected"] and isinstance(grey.targets, list)

    rgb = pf.PathfinderDataset("val", n=4, seed=0, channels=3, transform=create_transform(32))
    x, _ = rgb[1]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32)
    raw = np.asarray(pf.PathfinderDataset("val", n=4, seed=0, channels=3)[1][0])
    assert raw.shape == (32, 32, 3) and np.array_equal(raw[..., 0], grey.images[1])

    one = pf.PathfinderDataset("val", n=4, seed=0, transform=create_transform(32, mean=(0.5,), std=(0.5,)))
    assert one[2][0].shape == (1, 32, 32)


def test_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = pf.PathfinderDataset("test", n=12, seed=9, root=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and f"v{pf.GENERATOR_VERSION}" in files[0].name

    def boom(*args: object) -> None:
        raise AssertionError("regenerated although the cache was valid")

    monkeypatch.setattr(pf, "_generate", boom)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = pf.PathfinderDataset("test", n=12, seed=9, root=tmp_path)
    assert np.array_equal(again.images, first.images) and again.targets == first.targets


def test_cache_detects_tampering(tmp_path: Path) -> None:
    good = pf.PathfinderDataset("val", n=8, seed=2, root=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    with np.load(path) as z:
        images, labels, sha = z["images"].copy(), z["labels"], z["sha256"]
    images[0, 5, 5] ^= 0xFF  # flip one pixel, keep the old checksum
    np.savez(path, images=images, labels=labels, sha256=sha)
    with pytest.warns(UserWarning, match="sha256 mismatch"):
        fixed = pf.PathfinderDataset("val", n=8, seed=2, root=tmp_path)
    assert np.array_equal(fixed.images, good.images)
    with np.load(path) as z:  # and the file was rewritten with good content
        assert np.array_equal(z["images"], good.images)

    path.write_bytes(path.read_bytes()[:100])  # truncated: not even a readable archive
    with pytest.warns(UserWarning, match="invalid"):
        fixed = pf.PathfinderDataset("val", n=8, seed=2, root=tmp_path)
    assert np.array_equal(fixed.images, good.images)


def test_cache_key_separates_parameters(tmp_path: Path) -> None:
    pf.PathfinderDataset("train", n=4, seed=0, root=tmp_path)
    pf.PathfinderDataset("train", n=4, seed=1, root=tmp_path)
    pf.PathfinderDataset("train", n=4, seed=0, difficulty="hard", root=tmp_path)
    pf.PathfinderDataset("train", n=4, seed=0, resolution=64, root=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_save_examples_png(tmp_path: Path) -> None:
    out = pf.save_examples_png(tmp_path / "grid.png", n=6, difficulty="hard", seed=1, cols=3)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
        assert np.asarray(im.convert("L")).std() > 10  # not a blank canvas
