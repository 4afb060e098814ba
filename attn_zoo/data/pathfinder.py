"""Pathfinder: a generated long-range vision task (no download needed), after Linsley et al. 2018 and the
Pathfinder task of Long Range Arena (Tay et al. 2021): are the two marker discs joined by one curved path?

The specification (difficulties, geometry, how an image is built, the label rule, rendering, the residual cue
and the determinism guarantees) is in docs/data.md, section "Pathfinder". Any change to the output must bump
:data:`GENERATOR_VERSION` (the cache key and a golden-hash test depend on it).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch.utils.data
from PIL import Image

from attn_zoo.errors import ConfigError, UnknownNameError

__all__ = [
    "BASE_RESOLUTION",
    "DIFFICULTIES",
    "GENERATOR_VERSION",
    "SPLITS",
    "DifficultySpec",
    "PathfinderDataset",
    "PathfinderLayout",
    "generate_pathfinder",
    "load_or_generate",
    "render_layouts",
    "sample_layouts",
    "save_examples_png",
]

GENERATOR_VERSION = 1
BASE_RESOLUTION = 32

# --- geometry constants, in base-grid pixels (see the module docstring table) -----------------------
_Q = 256  # fixed-point units per base pixel; a power of two, so int -> float conversion is exact
_N_HEADINGS = 256
SEGMENT_LENGTH = 2.0
MAX_TURN = 24  # heading steps of 360/256 degrees
STROKE_RADIUS = 0.5
MARKER_RADIUS = 1.5
MARGIN = 2.0
# Extra clearance beyond the two radii: each side inks pixels up to 0.5 px past its radius, and two
# 8-adjacent pixel centres are up to sqrt(2) apart.
_ADJACENCY = 1.0 + math.sqrt(2.0)

_SEG_Q = int(SEGMENT_LENGTH * _Q)
_MARGIN_Q = int(MARGIN * _Q)
_CANVAS_Q = BASE_RESOLUTION * _Q

# Step vector for each heading, in fixed point. Rounded once from float cosines; the test suite checks
# that no entry lies near a rounding tie, so every libm produces the same integer table.
_ANGLES = 2.0 * np.pi * np.arange(_N_HEADINGS) / _N_HEADINGS
_STEP_FLOAT = _SEG_Q * np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)
_STEPS = np.rint(_STEP_FLOAT).astype(np.int64)  # (256, 2) as (dx, dy)

# The geometric touch test compares only endpoint-to-segment distances. That also catches crossings
# because two crossing segments always have an endpoint within SEGMENT_LENGTH / 2 of the other one,
# which is less than the smallest clearance.
assert SEGMENT_LENGTH / 2 < 2 * STROKE_RADIUS + _ADJACENCY

# Rejection sampling is vectorised: candidates are drawn and tested in batches (big where acceptance
# is rare, small where nearly every candidate passes), and a stage that fails for too many rounds
# starts the image over. The split budget is part of the definition of the template distribution
# (applied to both labels); the placement budget is so generous that it practically never runs out.
_TEMPLATE_BATCH = 8
_PLACE_BATCH = 4
_SPLIT_ROUNDS = 2
_PLACE_ROUNDS = 50
_CHUNK = 1024  # images sampled in lock step (bounds the memory of the pairwise distance arrays)

# spawn_key tags keep the per-image and per-pair seed streams apart.
_TAG_IMAGE = 1
_TAG_LABEL = 2
_LABEL_BLOCK = 1024


@dataclass(frozen=True)
class DifficultySpec:
    """Parameters of one difficulty level (lengths in segments; see the module docstring)."""

    segments: int
    min_paths: int
    max_paths: int
    max_shared: int  # a negative's marked paths keep 1..max_shared segments of the template
    split_batch: int  # split tries per round (short paths split successfully less often)


DIFFICULTIES: dict[str, DifficultySpec] = {
    "easy": DifficultySpec(segments=6, min_paths=4, max_paths=6, max_shared=1, split_batch=32),
    "medium": DifficultySpec(segments=9, min_paths=3, max_paths=5, max_shared=2, split_batch=16),
    "hard": DifficultySpec(segments=14, min_paths=3, max_paths=4, max_shared=4, split_batch=8),
}

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES: dict[str, int] = {"train": 20_000, "val": 2_000, "test": 2_000}


@dataclass(frozen=True)
class PathfinderLayout:
    """The geometry of one image, independent of the resolution it is rendered at.

    Attributes:
        label: 1 if both markers are ends of one path, else 0.
        paths: (K, L + 1, 2) float64 vertices (x, y) in base-grid pixels. Path 0 carries marker 0;
            path 1 is the second marked path of a negative or the unmarked partner path M2 of a
            positive; paths 2.. are distractors.
        markers: (2, 2) float64 marker centres (x, y) in base-grid pixels.
        marker_paths: index into ``paths`` of the path each marker sits on: (0, 0) or (0, 1).
        shared: (j_A, j_B), segments the two marked paths of a negative keep from the template;
            (0, 0) for a positive.
        redraws: times the layout was started over because a stage ran out of tries (the template
            had no working split, or a path found no place). The same rule applies to both labels.
    """

    label: int
    paths: np.ndarray
    markers: np.ndarray
    marker_paths: tuple[int, int]
    shared: tuple[int, int]
    redraws: int


# --- small helpers ------------------------------------------------------------------------------------


def _spec(difficulty: str) -> DifficultySpec:
    try:
        return DIFFICULTIES[difficulty]
    except KeyError:
        raise UnknownNameError("pathfinder difficulty", difficulty, DIFFICULTIES) from None


def _check_args(n: int, resolution: int, seed: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"pathfinder n must be a non-negative int, got {n!r}")
    if not isinstance(resolution, (int, np.integer)) or resolution < BASE_RESOLUTION:
        raise ConfigError(f"pathfinder resolution must be an int >= {BASE_RESOLUTION}, got {resolution!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"pathfinder seed must be a non-negative int, got {seed!r}")


def _ints(raw: np.ndarray, lo: np.ndarray | int, hi: np.ndarray | int) -> np.ndarray:
    """Map raw 64-bit generator outputs to integers in [lo, hi) (broadcasting).

    Multiply-shift on the top 32 bits: integer-only, so it is the same everywhere, and it relies only
    on the PCG64 bit stream, which NumPy keeps stable. The bias (below span / 2**32) is irrelevant here.
    """
    span = (np.asarray(hi, np.int64) - np.asarray(lo, np.int64)).astype(np.uint64)
    return np.asarray(lo, np.int64) + ((raw >> np.uint64(32)) * span >> np.uint64(32)).astype(np.int64)


def _walk(start: np.ndarray, heading0: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """Chains of segments in fixed point, batched over the leading axis.

    Args:
        start: (m, 2) or (2,) int64 first vertex.
        heading0: (m,) int heading of the first segment.
        turns: (m, L - 1) int heading change before each later segment.

    Returns:
        (m, L + 1, 2) int64 vertices.
    """
    headings = heading0[:, None] + np.concatenate((np.zeros_like(turns[:, :1]), turns), 1).cumsum(1)
    steps = _STEPS[headings % _N_HEADINGS]  # (m, L, 2)
    verts = np.concatenate((np.zeros_like(steps[:, :1]), steps.cumsum(1)), axis=1)
    return verts + np.asarray(start)[..., None, :]


def _shape_bounds(segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranges [lo, hi) of a shape's draws: first heading, then L - 1 turns."""
    lo = np.full(segments, -MAX_TURN, np.int64)
    hi = np.full(segments, MAX_TURN + 1, np.int64)
    lo[0], hi[0] = 0, _N_HEADINGS
    return lo, hi


# --- the touch test -------------------------------------------------------------------------------------
#
# A path (plus up to two marker discs) is a *block*: points P = its L + 1 vertices and 2 disc centres,
# segments S = its L capsules and the 2 discs as zero-length segments. Absent discs get radius 0 and are
# parked far away, the points at +_FAR and the segments at -_FAR, so that padding never meets padding.
# Two blocks touch when some point of one comes within r_point + r_segment + _ADJACENCY of some segment
# of the other. Every segment end point is in P, so this is the exact capsule/disc distance test,
# except for crossings, which it catches anyway (see the assert below _STEPS).
# float32 is exact for the fixed-point coordinates and halves the memory traffic; all operations are
# correctly rounded IEEE ones, so the decisions are the same on every machine.

_FAR = 1.0e4


@dataclass
class _Blocks:
    """A batch of blocks (leading shape ``...``); coordinates in base px, float32."""

    p: np.ndarray  # (..., L + 3, 2) vertices then two disc centres
    rp: np.ndarray  # (..., L + 3)
    sa: np.ndarray  # (..., L + 2, 2) capsule starts then discs
    sb: np.ndarray  # (..., L + 2, 2) capsule ends then discs
    rs: np.ndarray  # (..., L + 2)
    lo: np.ndarray  # (..., 2) bounding box including the radii
    hi: np.ndarray  # (..., 2)

    def take(self, *index: Any) -> _Blocks:
        return _Blocks(*(getattr(self, f)[index] for f in _BLOCK_FIELDS))


_BLOCK_FIELDS = ("p", "rp", "sa", "sb", "rs", "lo", "hi")


def _blocks(verts_q: np.ndarray, discs_q: np.ndarray | None = None, has_disc: np.ndarray | None = None) -> _Blocks:
    """Blocks of paths (leading shape ``...``).

    Args:
        verts_q: (..., L + 1, 2) int64 vertices.
        discs_q: (..., 2, 2) int64 disc centres, used where has_disc (..., 2) is True; None: no discs.
    """
    lead = verts_q.shape[:-2]
    v = (verts_q / _Q).astype(np.float32)
    if discs_q is None:
        disc_p = np.full((*lead, 2, 2), _FAR, np.float32)
        disc_s = -disc_p
        r_disc = np.zeros((*lead, 2), np.float32)
    else:
        d = (discs_q / _Q).astype(np.float32)
        disc_p = np.where(has_disc[..., None], d, np.float32(_FAR))
        disc_s = np.where(has_disc[..., None], d, np.float32(-_FAR))
        r_disc = np.where(has_disc, np.float32(MARKER_RADIUS), np.float32(0.0))
    r_vert = np.full((*lead, v.shape[-2]), STROKE_RADIUS, np.float32)
    p = np.concatenate((v, disc_p), axis=-2)
    rp = np.concatenate((r_vert, r_disc), axis=-1)
    sa = np.concatenate((v[..., :-1, :], disc_s), axis=-2)
    sb = np.concatenate((v[..., 1:, :], disc_s), axis=-2)
    rs = np.concatenate((r_vert[..., 1:], r_disc), axis=-1)
    real = (rp > 0)[..., None]
    lo = np.where(real, p - rp[..., None], np.float32(np.inf)).min(-2)
    hi = np.where(real, p + rp[..., None], np.float32(-np.inf)).max(-2)
    return _Blocks(p, rp, sa, sb, rs, lo, hi)


def _start_disc_blocks(verts_q: np.ndarray) -> _Blocks:
    """Blocks of paths (m, L + 1, 2) with one marker disc on their first vertex."""
    m = len(verts_q)
    has = np.zeros((m, 2), bool)
    has[:, 0] = True
    return _blocks(verts_q, verts_q[:, [0, 0]], has)


def _point_segment_hits(p: np.ndarray, rp: np.ndarray, a: np.ndarray, b: np.ndarray, rs: np.ndarray) -> np.ndarray:
    """(m,) bool: some point p (m, P, 2), radius rp (m, P), lies within rp + rs + _ADJACENCY of a segment.

    Segments a-b (m, S, 2) with radii rs (m, S); a == b (a disc) is fine.
    """
    dx = (b[..., 0] - a[..., 0])[:, None, :]
    dy = (b[..., 1] - a[..., 1])[:, None, :]
    den = np.maximum(dx * dx + dy * dy, np.float32(1e-12))
    px = p[:, :, None, 0] - a[:, None, :, 0]
    py = p[:, :, None, 1] - a[:, None, :, 1]
    t = np.clip((px * dx + py * dy) / den, np.float32(0.0), np.float32(1.0))
    ex = px - t * dx
    ey = py - t * dy
    need = rp[:, :, None] + rs[:, None, :] + np.float32(_ADJACENCY)
    return (ex * ex + ey * ey < need * need).any(axis=(1, 2))


def _touch(b1: _Blocks, b2: _Blocks) -> np.ndarray:
    """(m,) bool for two aligned batches of m blocks; bounding boxes settle the far pairs cheaply."""
    near = np.all((b1.lo < b2.hi + _ADJACENCY) & (b2.lo < b1.hi + _ADJACENCY), axis=-1)
    out = np.zeros(near.shape, bool)
    k = np.flatnonzero(near)
    if len(k):
        c1, c2 = b1.take(k), b2.take(k)
        hit = _point_segment_hits(c1.p, c1.rp, c2.sa, c2.sb, c2.rs)
        rest = np.flatnonzero(~hit)
        hit[rest] = _point_segment_hits(c2.p[rest], c2.rp[rest], c1.sa[rest], c1.sb[rest], c1.rs[rest])
        out[k] = hit
    return out


# --- lock-step sampling ----------------------------------------------------------------------------------


@dataclass
class _State:
    """Sampling state of one image while its chunk is processed in lock step."""

    bits: np.random.PCG64
    label: int
    n_paths: int
    verts: np.ndarray  # (max paths, L + 1, 2) int64; the first ``count`` rows are placed paths
    phase: str = "template"
    redraws: int = 0
    tries: int = 0  # rounds spent in the current phase
    count: int = 0
    template: np.ndarray | None = None  # (L + 1, 2) int64 at the origin
    draws: np.ndarray | None = None  # (L,) the template's first heading, then its turns
    shared: tuple[int, int] = (0, 0)
    markers: np.ndarray | None = None  # (2, 2) int64
    comp: list[int] = field(default_factory=list)  # ink component of each path; 0 and 1 stay apart

    def enter(self, phase: str) -> None:
        self.phase, self.tries = phase, 0

    def start_over(self) -> None:
        self.redraws += 1
        self.count, self.comp = 0, []
        self.enter("template")

    def add(self, path: np.ndarray, comp: int) -> None:
        self.verts[self.count] = path
        self.count += 1
        self.comp.append(comp)


def _raw(states: Sequence[_State], k: int) -> np.ndarray:
    """(n, k) uint64: the next k outputs of each image's own generator."""
    return np.stack([s.bits.random_raw(k) for s in states])


def _template_round(states: list[_State], spec: DifficultySpec) -> None:
    """Draw template candidates; keep the first whose end pieces could carry a negative's markers.

    Its first and last segment, each with a marker disc, must not touch (a negative keeps at least
    these two pieces on different paths), and it must fit on the canvas.
    """
    segs, n, bsz = spec.segments, len(states), _TEMPLATE_BATCH
    lo, hi = _shape_bounds(segs)
    draws = _ints(_raw(states, bsz * segs).reshape(n * bsz, segs), lo, hi)
    flat = _walk(np.zeros(2, np.int64), draws[:, 0], draws[:, 1:])
    fits = np.all(flat.max(1) - flat.min(1) <= _CANVAS_Q - 2 * _MARGIN_Q, axis=1)
    first_piece = _start_disc_blocks(flat[:, :2])
    last_piece = _start_disc_blocks(flat[:, -1:-3:-1])  # walked backwards: the disc sits on its start
    ok = fits & ~_touch(first_piece, last_piece)
    ok = ok.reshape(n, bsz)
    for i, s in enumerate(states):
        if ok[i].any():
            t = i * bsz + int(np.argmax(ok[i]))
            s.template, s.draws = flat[t], draws[t]
            s.enter("split")


def _split_round(states: list[_State], spec: DifficultySpec) -> None:
    """Try to split each template into the two marked paths of a negative (for both labels).

    Path A keeps the template's first ``j_A`` segments (from marker 0), path B its last ``j_B``
    segments walked backwards (from marker 1); both continue with fresh random turns to the full
    segment count. A try is accepted when A and B (with their markers) do not touch and template, A
    and B fit on the canvas together. A template without a working split after ``_SPLIT_ROUNDS``
    rounds is re-drawn, whatever the label, so the template keeps one distribution for both labels.
    """
    segs, bsz, n = spec.segments, spec.split_batch, len(states)
    lo = np.r_[1, 1, np.full(2 * (segs - 1), -MAX_TURN)]
    hi = np.r_[spec.max_shared + 1, spec.max_shared + 1, np.full(2 * (segs - 1), MAX_TURN + 1)]
    draws = _ints(_raw(states, bsz * len(lo)).reshape(n, bsz, len(lo)), lo, hi)
    tmpl = np.stack([s.template for s in states])  # (n, L + 1, 2)
    tt = np.stack([s.draws for s in states])  # (n, L)
    j_a, j_b = draws[..., 0], draws[..., 1]
    idx = np.arange(1, segs)  # turn i comes before segment i
    turns_a = np.where(idx < j_a[..., None], tt[:, None, 1:], draws[..., 2 : segs + 1])
    # The template walked backwards from its last vertex: reversed, negated turns, heading + 180 deg.
    turns_b = np.where(idx < j_b[..., None], -tt[:, None, :0:-1], draws[..., segs + 1 :])
    back_h0 = tt.sum(1) + _N_HEADINGS // 2
    path_a = _walk(np.repeat(tmpl[:, 0], bsz, 0), np.repeat(tt[:, 0], bsz), turns_a.reshape(n * bsz, -1))
    path_b = _walk(np.repeat(tmpl[:, -1], bsz, 0), np.repeat(back_h0, bsz), turns_b.reshape(n * bsz, -1))
    lo_box = np.minimum(np.minimum(path_a.min(1), path_b.min(1)), np.repeat(tmpl.min(1), bsz, 0))
    hi_box = np.maximum(np.maximum(path_a.max(1), path_b.max(1)), np.repeat(tmpl.max(1), bsz, 0))
    ok = np.all(hi_box - lo_box <= _CANVAS_Q - 2 * _MARGIN_Q, axis=1)
    # Cheap certain failures first: two vertices closer than the stroke clearance means touching.
    gap = (path_a[:, :, None, :] - path_b[:, None, :, :]).astype(np.float32) / np.float32(_Q)
    close = gap[..., 0] ** 2 + gap[..., 1] ** 2 < np.float32((2 * STROKE_RADIUS + _ADJACENCY) ** 2)
    ok &= ~close.any((1, 2))
    k = np.flatnonzero(ok)
    ok[k] = ~_touch(_start_disc_blocks(path_a[k]), _start_disc_blocks(path_b[k]))
    ok = ok.reshape(n, bsz)
    done = []
    for i, s in enumerate(states):
        if ok[i].any():
            done.append((s, i * bsz + int(np.argmax(ok[i]))))
        else:
            s.tries += 1
            if s.tries >= _SPLIT_ROUNDS:
                s.start_over()
    if not done:
        return
    # Translate template, A and B together, uniformly among the positions that keep all on the canvas.
    t = np.array([d[1] for d in done])
    shift = _ints(_raw([d[0] for d in done], 2), _MARGIN_Q - lo_box[t], _CANVAS_Q - _MARGIN_Q - hi_box[t] + 1)
    for (s, ti), sh in zip(done, shift):
        tmpl_s = s.template + sh
        s.markers = np.stack([tmpl_s[0], tmpl_s[-1]])
        s.shared = (int(j_a.flat[ti]), int(j_b.flat[ti]))
        if s.label:
            s.add(tmpl_s, 0)
            s.enter("partner")
        else:
            s.add(path_a[ti] + sh, 0)
            s.add(path_b[ti] + sh, 1)
            s.enter("distractors")


def _candidates(states: list[_State], counts: list[int], segs: int) -> tuple[np.ndarray, np.ndarray]:
    """counts[i] random paths for image i, each placed uniformly where it fits.

    Returns vertices (n, C, L + 1, 2) int64, padded far away, and which are real candidates (n, C).
    """
    n, c_max = len(states), max(counts)
    lo, hi = _shape_bounds(segs)
    raw = np.zeros((n, c_max * segs), np.uint64)
    for i, (s, c) in enumerate(zip(states, counts)):
        raw[i, : c * segs] = s.bits.random_raw(c * segs)
    draws = _ints(raw.reshape(n * c_max, segs), lo, hi)
    verts = _walk(np.zeros(2, np.int64), draws[:, 0], draws[:, 1:]).reshape(n, c_max, segs + 1, 2)
    lo_s = _MARGIN_Q - verts.min(2)
    hi_s = _CANVAS_Q - _MARGIN_Q - verts.max(2)
    real = np.arange(c_max) < np.array(counts)[:, None]
    valid = real & np.all(lo_s <= hi_s, axis=-1)
    raw = np.zeros((n, c_max * 2), np.uint64)
    for i, (s, c) in enumerate(zip(states, counts)):
        raw[i, : c * 2] = s.bits.random_raw(c * 2)
    shift = _ints(raw.reshape(n, c_max, 2), lo_s, np.maximum(hi_s, lo_s) + 1)
    verts = np.where(real[..., None, None], verts + shift[:, :, None, :], -(10**7))  # padding: far away
    return verts, valid


def _placed(states: list[_State]) -> _Blocks:
    """Blocks of the paths placed so far, with their marker discs: leading shape (n, P), padded."""
    n, p_max = len(states), max(s.count for s in states)
    verts = np.full((n, p_max, states[0].verts.shape[1], 2), -(10**7), np.int64)
    for i, s in enumerate(states):
        verts[i, : s.count] = s.verts[: s.count]
        verts[i, s.count :] -= 10**7 * (1 + np.arange(p_max - s.count))[:, None, None]  # keep pads apart
    markers = np.stack([s.markers for s in states])  # (n, 2, 2)
    pos = np.array([s.label for s in states], bool)
    discs = np.zeros((n, p_max, 2, 2), np.int64)
    has = np.zeros((n, p_max, 2), bool)
    discs[:, 0, 0], has[:, 0, 0] = markers[:, 0], True  # marker 0 is on path 0 in both classes
    discs[:, 0, 1], has[:, 0, 1] = markers[:, 1], pos  # marker 1: on path 0 (positive) ...
    if p_max > 1:
        discs[:, 1, 0], has[:, 1, 0] = markers[:, 1], ~pos  # ... or on path 1 (negative)
    return _blocks(verts, discs, has)


def _partner_round(states: list[_State], spec: DifficultySpec) -> None:
    """Positives: place the unmarked partner path M2 anywhere it does not touch the marked path."""
    segs, n, bsz = spec.segments, len(states), _PLACE_BATCH
    verts, valid = _candidates(states, [bsz] * n, segs)
    rows = np.arange(n).repeat(bsz)
    cand = _blocks(verts).take(rows, np.tile(np.arange(bsz), n))
    marked = _placed(states).take(rows, np.zeros(n * bsz, np.int64))
    ok = valid & ~_touch(cand, marked).reshape(n, bsz)
    for i, s in enumerate(states):
        if ok[i].any():
            s.add(verts[i, int(np.argmax(ok[i]))], comp=1)
            s.enter("distractors")
        else:
            s.tries += 1
            if s.tries >= _PLACE_ROUNDS:
                s.start_over()


def _distractor_round(states: list[_State], spec: DifficultySpec) -> None:
    """Draw one candidate per missing distractor and accept them in order.

    A candidate may cross or touch anything except both marked components at once (that would join
    the markers of a negative, or the marked path and the partner of a positive: one rule for both
    labels).
    """
    counts = [s.n_paths - s.count for s in states]
    verts, valid = _candidates(states, counts, spec.segments)
    cand = _blocks(verts)  # (n, C)
    placed = _placed(states)  # (n, P)
    n, c_max = valid.shape
    p_max = placed.p.shape[1]
    i_, c_, p_ = _grid(n, c_max, p_max)
    vs_placed = _touch(cand.take(i_, c_), placed.take(i_, p_)).reshape(n, c_max, p_max)
    i_, c_, d_ = _grid(n, c_max, c_max)
    upper = c_ < d_  # each unordered candidate pair once
    vs_cand = np.zeros(n * c_max * c_max, bool)
    vs_cand[upper] = _touch(cand.take(i_[upper], c_[upper]), cand.take(i_[upper], d_[upper]))
    vs_cand = vs_cand.reshape(n, c_max, c_max)
    vs_cand |= vs_cand.swapaxes(1, 2)
    for i, s in enumerate(states):
        n_old, taken = s.count, []
        for c in range(counts[i]):
            if not valid[i, c]:
                continue
            hit = [p for p in range(n_old) if vs_placed[i, c, p]]
            hit += [n_old + k for k, c2 in enumerate(taken) if vs_cand[i, c, c2]]
            touched = {s.comp[p] for p in hit}
            if 0 in touched and 1 in touched:
                continue
            # Join every component it touches (never 0 and 1 together); fresh ids grow with the count.
            comp = min(touched) if touched else s.count + 1
            s.comp = [comp if x in touched else x for x in s.comp]
            s.add(verts[i, c], comp)
            taken.append(c)
        s.tries += 1
        if s.count == s.n_paths:
            s.enter("done")
        elif s.tries >= _PLACE_ROUNDS:
            s.start_over()


def _grid(*sizes: int) -> tuple[np.ndarray, ...]:
    """Flat index arrays enumerating every combination of ``range(size)`` for the given sizes."""
    return tuple(g.ravel() for g in np.meshgrid(*(np.arange(k) for k in sizes), indexing="ij"))


_ROUNDS = {
    "template": _template_round,
    "split": _split_round,
    "partner": _partner_round,
    "distractors": _distractor_round,
}


def _bits(seed: int, tag: int, stream: int, index: int) -> np.random.PCG64:
    # A fixed-length spawn_key keeps (tag, stream, index) unambiguous; SeedSequence pads the entropy
    # before appending the key, so seed and key never alias each other.
    return np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(tag, stream, int(index))))


def _labels(seed: int, stream: int, indices: range) -> np.ndarray:
    """Labels of the given images: one positive per pair (2p, 2p + 1), which one set by a coin flip.

    The flips come in blocks of _LABEL_BLOCK pairs from one generator per block, so a label depends
    only on (seed, stream, index).
    """
    out = np.empty(len(indices), np.int64)
    block = None
    for k, i in enumerate(indices):
        pair = i // 2
        if block is None or block[0] != pair // _LABEL_BLOCK:
            bits = _bits(seed, _TAG_LABEL, stream, pair // _LABEL_BLOCK)
            block = (pair // _LABEL_BLOCK, bits.random_raw(_LABEL_BLOCK) >> np.uint64(63))
        out[k] = (i % 2) ^ int(block[1][pair % _LABEL_BLOCK])
    return out


def _sample_chunk(seed: int, stream: int, indices: range, spec: DifficultySpec) -> list[PathfinderLayout]:
    """Layouts of the given image indices, sampled in lock step.

    Each image has its own generator and its own sequence of draws, which depends only on its own
    outcomes; processing many images per round only amortises the numpy call overhead.
    """
    states = []
    for i, label in zip(indices, _labels(seed, stream, indices)):
        bits = _bits(seed, _TAG_IMAGE, stream, i)
        n_paths = int(_ints(bits.random_raw(1), spec.min_paths, spec.max_paths + 1)[0])
        verts = np.zeros((spec.max_paths, spec.segments + 1, 2), np.int64)
        states.append(_State(bits=bits, label=int(label), n_paths=n_paths, verts=verts))
    while True:
        busy = False
        for phase, step in _ROUNDS.items():
            group = [s for s in states if s.phase == phase]
            if group:
                step(group, spec)
                busy = True
        if not busy:
            break
    return [
        PathfinderLayout(
            label=s.label,
            paths=s.verts[: s.count] / _Q,
            markers=s.markers / _Q,
            marker_paths=(0, 0) if s.label else (0, 1),
            shared=(0, 0) if s.label else s.shared,
            redraws=s.redraws,
        )
        for s in states
    ]


def sample_layouts(
    n: int, *, difficulty: str = "easy", seed: int = 0, stream: int = 0, start: int = 0
) -> list[PathfinderLayout]:
    """Geometry of images ``start .. start + n - 1`` of a stream (the resolution is irrelevant here).

    ``stream`` separates independent sequences for the same seed (the dataset uses one per split).
    """
    _check_args(n, BASE_RESOLUTION, seed)
    spec = _spec(difficulty)
    out: list[PathfinderLayout] = []
    for c0 in range(start, start + n, _CHUNK):
        out += _sample_chunk(seed, stream, range(c0, min(c0 + _CHUNK, start + n)), spec)
    return out


# --- rendering --------------------------------------------------------------------------------------


def _elements(layout: PathfinderLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment starts (E, 2), ends (E, 2) and radii (E,) of every drawn element, base px."""
    p = layout.paths
    a = np.concatenate((p[:, :-1].reshape(-1, 2), layout.markers))
    b = np.concatenate((p[:, 1:].reshape(-1, 2), layout.markers))
    r = np.concatenate((np.full(len(a) - 2, STROKE_RADIUS), np.full(2, MARKER_RADIUS)))
    return a, b, r


def render_layouts(layouts: Sequence[PathfinderLayout], resolution: int = 32) -> np.ndarray:
    """Rasterise layouts into uint8 images (n, resolution, resolution); see the module docstring.

    Vectorised over images: each element touches only a small fixed-size window, and the loop runs
    over the element *slot* (the k-th element of every image at once), so no two writes in one
    step hit the same image and a plain fancy-indexed maximum is correct.
    """
    _check_args(len(layouts), resolution, 0)
    scale = resolution / BASE_RESOLUTION
    n = len(layouts)
    out = np.zeros((n, resolution, resolution), np.uint8)
    if n == 0:
        return out
    extent = max(SEGMENT_LENGTH + 2 * STROKE_RADIUS, 2 * MARKER_RADIUS) * scale
    win = math.ceil(extent + 2.0) + 2  # inked pixels reach 0.5 px past the radius, plus floor slack
    pad = win
    chunk = max(1, min(n, 4_000_000 // (win * win * 64)))
    ar = np.arange(win)
    for c0 in range(0, n, chunk):
        part = layouts[c0 : c0 + chunk]
        elems = [_elements(lay) for lay in part]
        e_max = max(len(e[2]) for e in elems)
        bsz = len(part)
        a = np.zeros((bsz, e_max, 2))
        b = np.zeros((bsz, e_max, 2))
        r = np.full((bsz, e_max), -1e3)  # padding slots: a hugely negative radius inks nothing
        for k, (ea, eb, er) in enumerate(elems):
            a[k, : len(er)], b[k, : len(er)], r[k, : len(er)] = ea, eb, er
        a *= scale
        b *= scale
        r = np.where(r > 0, r * scale, r)
        canvas = np.zeros((bsz, resolution + 2 * pad, resolution + 2 * pad), np.uint8)
        bidx = np.arange(bsz)[:, None, None]
        for k in range(e_max):
            ak, bk, rk = a[:, k], b[:, k], r[:, k]
            rad = np.maximum(rk, 0.0)
            origin = np.floor(np.minimum(ak, bk) - rad[:, None] - 1.0).astype(np.int64)  # (B, 2)
            origin = np.clip(origin, -pad, resolution + pad - win)
            cx = (origin[:, 0:1] + ar + 0.5)[:, None, :]  # (B, 1, W) pixel-centre x
            cy = (origin[:, 1:2] + ar + 0.5)[:, :, None]  # (B, W, 1) pixel-centre y
            dx = (bk[:, 0] - ak[:, 0])[:, None, None]
            dy = (bk[:, 1] - ak[:, 1])[:, None, None]
            den = np.maximum(dx * dx + dy * dy, 1e-12)
            px = cx - ak[:, 0, None, None]
            py = cy - ak[:, 1, None, None]
            t = np.clip((px * dx + py * dy) / den, 0.0, 1.0)
            ex = px - t * dx
            ey = py - t * dy
            dist = np.sqrt(ex * ex + ey * ey)
            val = np.rint(np.clip(rk[:, None, None] + 0.5 - dist, 0.0, 1.0) * 255.0).astype(np.uint8)
            rows = (origin[:, 1:2] + pad + ar)[:, :, None]
            cols = (origin[:, 0:1] + pad + ar)[:, None, :]
            canvas[bidx, rows, cols] = np.maximum(canvas[bidx, rows, cols], val)
        out[c0 : c0 + bsz] = canvas[:, pad : pad + resolution, pad : pad + resolution]
    return out


def _generate(n: int, resolution: int, difficulty: str, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    _check_args(n, resolution, seed)
    layouts = sample_layouts(n, difficulty=difficulty, seed=seed, stream=stream)
    images = render_layouts(layouts, resolution)
    labels = np.array([lay.label for lay in layouts], dtype=np.int64)
    return images, labels


def generate_pathfinder(
    n: int, *, resolution: int = 32, difficulty: str = "easy", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` Pathfinder images.

    Returns:
        images: (n, resolution, resolution) uint8, black background, white strokes and markers.
        labels: (n,) int64 in {0, 1}; 1 = the markers are connected. Even ``n``: exactly ``n // 2``
            positives. Image ``i`` depends only on ``(seed, i)``, so prefixes agree across ``n``.
    """
    return _generate(n, resolution, difficulty, seed, stream=SPLITS["train"])


# --- dataset and cache ------------------------------------------------------------------------------


def _digest(images: np.ndarray, labels: np.ndarray, key: str) -> str:
    h = hashlib.sha256(key.encode())
    for arr in (images, labels):
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _cache_key(split: str, n: int, resolution: int, difficulty: str, seed: int) -> str:
    return f"pathfinder-v{GENERATOR_VERSION}-{difficulty}-r{resolution}-n{n}-s{seed}-{split}"


def load_or_generate(
    root: str | os.PathLike[str] | None,
    split: str,
    n: int,
    resolution: int,
    difficulty: str,
    seed: int,
    read_roots: Sequence[str | os.PathLike[str]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split, through an ``.npz`` cache under ``root`` when it is given.

    The file name is the cache key (generator version, difficulty, resolution, n, seed, split). The
    stored sha256 covers the key and both arrays; a file that fails to load or to verify is
    regenerated (with a warning) and rewritten atomically. ``read_roots`` (a suite's ``[data] root``) are
    looked in first and only read: a valid file there is used, and nothing is ever written there.
    """
    if split not in SPLITS:
        raise UnknownNameError("pathfinder split", split, SPLITS)
    key = _cache_key(split, n, resolution, difficulty, seed)
    for place in read_roots:
        found = _load_verified(Path(place) / f"{key}.npz", key, warn=False)
        if found is not None:
            return found
    if root is None:
        return _generate(n, resolution, difficulty, seed, SPLITS[split])
    from attn_zoo.paths import atomic_output, writable

    path = writable(Path(root) / f"{key}.npz")  # refused before any work when it lies outside the allowed places
    if path.exists():
        found = _load_verified(path, key, warn=True)
        if found is not None:
            return found
    images, labels = _generate(n, resolution, difficulty, seed, SPLITS[split])
    # atomic, after the one write check: a concurrent reader sees the old file or the new one
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, labels=labels, sha256=np.array(_digest(images, labels, key)))
    return images, labels


def _load_verified(path: Path, key: str, warn: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """The arrays of a cache file whose stored sha256 matches, else None (with a warning when ``warn``)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels, stored = z["images"], z["labels"], str(z["sha256"])
        if stored == _digest(images, labels, key):
            return images, labels
        reason = "sha256 mismatch"
    except Exception as exc:  # any unreadable file is treated the same way: rebuild it
        reason = f"{type(exc).__name__}: {exc}"
    if warn:
        warnings.warn(f"pathfinder cache {path} is invalid ({reason}); regenerating", stacklevel=4)
    return None


class PathfinderDataset(torch.utils.data.Dataset):
    """Pathfinder as a map-style dataset yielding ``(PIL.Image, int)`` (or ``(transform(img), int)``).

    Splits use disjoint seed streams of the same ``seed`` (``train`` is the stream of
    :func:`generate_pathfinder`), so no image is shared between splits. ``n=None`` takes the split's
    default size from ``DEFAULT_SIZES``. Images are mode ``"L"`` for ``channels=1`` and ``"RGB"``
    (grey replicated) for ``channels=3``, so timm's ``create_transform`` pipelines apply.

    Attributes:
        images: (n, resolution, resolution) uint8 array.
        targets: list of n ints in {0, 1}.
        classes: ``["disconnected", "connected"]``.
    """

    classes: ClassVar[list[str]] = ["disconnected", "connected"]

    def __init__(
        self,
        split: str = "train",
        n: int | None = None,
        resolution: int = 32,
        difficulty: str = "easy",
        seed: int = 0,
        transform: Callable[[Image.Image], Any] | None = None,
        root: str | os.PathLike[str] | None = None,
        channels: int = 1,
        read_roots: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        if split not in SPLITS:
            raise UnknownNameError("pathfinder split", split, SPLITS)
        if channels not in (1, 3):
            raise ConfigError(f"pathfinder channels must be 1 or 3, got {channels!r}")
        _spec(difficulty)
        self.split, self.resolution, self.difficulty, self.seed = split, resolution, difficulty, seed
        self.n = DEFAULT_SIZES[split] if n is None else n
        self.transform, self.channels = transform, channels
        self.images, labels = load_or_generate(root, split, self.n, resolution, difficulty, seed, read_roots)
        self.targets: list[int] = labels.tolist()
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])  # 2-D uint8 -> mode "L"
        if self.channels == 3:
            img = img.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


# --- looking at it -----------------------------------------------------------------------------------


def save_examples_png(
    path: str | os.PathLike[str],
    n: int = 16,
    *,
    resolution: int = 32,
    difficulty: str = "easy",
    seed: int = 0,
    cols: int = 4,
) -> Path:
    """Write a grid of ``n`` examples, each titled with its label, to a PNG (matplotlib, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images, labels = generate_pathfinder(n, resolution=resolution, difficulty=difficulty, seed=seed)
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows))
    FigureCanvasAgg(fig)  # no pyplot: the global backend and figure registry stay untouched
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i < n:
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{i}: {PathfinderDataset.classes[labels[i]]}", fontsize=9)
    fig.suptitle(f"pathfinder {difficulty}, {resolution}x{resolution}, seed {seed}", fontsize=10)
    fig.tight_layout()
    from attn_zoo.paths import atomic_output

    out = Path(path)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=100, format=out.suffix.lstrip(".") or "png")
    return out
