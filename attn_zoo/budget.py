"""Equal budgets: size each mechanism to a target (parameters, MACs at a resolution, or measured latency).

Width first. One multiplier scales every stage's width (each rounded to a multiple of its head count, at
least one head-multiple); it is found by a secant search on log(metric) against log(multiplier) (metrics
grow about quadratically with width), bracketed to [1/64, 64]. If the rounded widths still miss the target
by more than the tolerance, single stages move by whole head-multiples: every stage is measured one step
up and one down, a per-stage quadratic model predicts all combinations of up to two steps per stage, and
the best-predicted few are measured; the closest measured one wins (fewest changed stages among those
within tolerance). Depth next, only when width cannot get there: stages (deepest first) gain or lose a
block pair (one block when the depth is odd) and the width search runs again.

Counting is cheap: parameters on the meta device; MACs on CPU for small models (real kernels are faster
than meta tracing) and on the meta device otherwise; latency is measured (median of repeats) on the
budget's device. Every result records target, achieved and relative error (:meth:`BudgetMatch.to_row`);
a target out of reach says so and why (:attr:`BudgetMatch.message`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from attn_zoo.backbone.config import ModelConfig
from attn_zoo.errors import AttnZooError, ConfigError

METRICS = ("params", "macs", "latency", "none")
MULTIPLIER_RANGE = (1 / 64, 64.0)
_SMALL_MODEL = 20_000_000  # below this many (estimated) parameters, count MACs with real CPU kernels


class BudgetOutOfReach(AttnZooError, ValueError):
    """No model the matcher can build lands within the tolerance of the target."""


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
    """``metric`` in params | macs | latency | none; ``target`` in its unit (parameters, MACs per image,
    milliseconds per batch); ``resolution`` for macs/latency (default: the model's img_size);
    ``tolerance``: allowed relative error; ``strict``: a target out of reach fails the cell (else the
    closest model trains, flagged ``budget_ok = 0``); ``device`` and ``batch_size``: where latency is timed."""

    metric: str = "none"
    target: float = 0.0
    resolution: int | None = None
    tolerance: float = 0.02
    strict: bool = True
    device: str = "cpu"
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"budget metric {self.metric!r} unknown; allowed: {', '.join(METRICS)}")
        if self.metric != "none" and (isinstance(self.target, bool) or not self.target > 0):
            raise ConfigError(f"budget target must be > 0 for metric {self.metric!r}, got {self.target!r}")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"budget tolerance must be in (0, 1), got {self.tolerance!r}")
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 1):
            raise ConfigError(f"budget resolution must be a positive integer, got {self.resolution!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"budget batch_size must be a positive integer, got {self.batch_size!r}")


Budget = BudgetConfig  # the name before cell specs were typed


@dataclasses.dataclass(frozen=True)
class BudgetMatch:
    """The sized model and how close it came. ``evaluations``: models counted or timed to get there."""

    config: ModelConfig
    metric: str
    target: float
    achieved: float
    within_tolerance: bool
    message: str
    evaluations: int = 0
    tolerance: float = 0.02

    @property
    def relative_error(self) -> float:
        return (self.achieved - self.target) / self.target if self.target else 0.0

    def to_row(self) -> dict[str, Any]:
        """Numbers for a result row (the metric's name is in the cell's spec)."""
        return {
            "budget_target": self.target,
            "budget_achieved": self.achieved,
            "budget_error": self.relative_error,
            "budget_tolerance": self.tolerance,
            "budget_ok": float(self.within_tolerance),
        }

    def require(self) -> BudgetMatch:
        """This match, or :class:`BudgetOutOfReach` with the message when it missed the tolerance."""
        if not self.within_tolerance:
            raise BudgetOutOfReach(self.message)
        return self


def budget_metric(
    config: ModelConfig,
    metric: str,
    resolution: int | None = None,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
) -> float:
    """Parameters, MACs (per image at ``resolution``) or latency (ms per batch on ``device``) of ``config``."""
    from attn_zoo.backbone.harness import Backbone
    from attn_zoo.measure.counting import count_model

    res = resolution or config.img_size
    if metric == "params":
        with torch.device("meta"):
            return float(sum(p.numel() for p in Backbone(config).parameters()))
    if metric == "macs":
        if _estimated_params(config) < _SMALL_MODEL and res <= 256:
            return float(count_model(Backbone(config), res, in_chans=config.in_chans)["macs"])
        try:
            with torch.device("meta"):
                model = Backbone(config)
            return float(count_model(model, res, in_chans=config.in_chans, device="meta")["macs"])
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel: count for real
            return float(count_model(Backbone(config), res, in_chans=config.in_chans)["macs"])
    if metric == "latency":
        from attn_zoo.measure.latency import measure_latency

        device = torch.device(device)
        model = Backbone(config).to(device).eval()
        x = torch.randn(batch_size, config.in_chans, res, res, device=device)
        with torch.no_grad():
            return float(measure_latency(lambda: model(x), device=device, warmup=3, repeats=9)["median_ms"])
    raise ConfigError(f"budget metric {metric!r} unknown; allowed: params, macs, latency")


def _estimated_params(config: ModelConfig) -> float:
    # blocks dominate: ~ (4 + 2 * mlp_ratio) C^2 per block
    return sum((4 + 2 * config.mlp_ratio) * d * d * n for d, n in zip(config.dims, config.depths))


def scale_width(config: ModelConfig, multiplier: float) -> ModelConfig:
    """Every stage's width times ``multiplier``, rounded to a multiple of its head count (at least one)."""
    dims = tuple(max(h, round(d * multiplier / h) * h) for d, h in zip(config.dims, config.heads))
    return config.replace(dims=dims)


class _Widths:
    """Which widths each stage's mechanisms accept (a multiple of the heads is not always enough: SSA needs
    ``int(C * r_c)`` to divide by the heads). Tested by building the stage's mixers on the meta device."""

    def __init__(self, config: ModelConfig):
        self.config, self.cache = config, {}

    def ok(self, config: ModelConfig, stage: int, width: int) -> bool:
        key = (stage, width, config.depths[stage])
        if key not in self.cache:
            self.cache[key] = self._builds(config, stage, width)
        return self.cache[key]

    def _builds(self, config: ModelConfig, stage: int, width: int) -> bool:
        from attn_zoo.layers.stems import stem_out_size
        from attn_zoo.registry import create_mechanism, get_mechanism

        size = stem_out_size(config.stem, (config.img_size, config.img_size), config.patch_size)
        for _ in range(stage):
            size = (math.ceil(size[0] / 2), math.ceil(size[1] / 2))
        heads = config.heads[stage]
        try:
            with torch.device("meta"):
                for spec, occurrence in dict.fromkeys((s, o) for s, o in _hashable(config.block_mixers(stage))):
                    knobs = dict(spec[1])
                    mixer = create_mechanism(
                        spec[0], width, heads, feat_size=size, stage=stage, occurrence=occurrence, **knobs
                    )
                    resolved = get_mechanism(spec[0]).resolve_knobs(knobs, stage=stage, occurrence=occurrence)
                    type(mixer).build_context(width, heads, size, resolved)
        except AttnZooError:
            return False
        return True

    def snap(self, config: ModelConfig) -> ModelConfig:
        """Each stage at the nearest width it accepts (the given one when it is accepted)."""
        dims = []
        for stage, (d, h) in enumerate(zip(config.dims, config.heads)):
            found = d
            for k in range(0, 16):
                ups = [d + k * h] + ([d - k * h] if k and d - k * h >= h else [])
                hit = next((w for w in ups if self.ok(config, stage, w)), None)
                if hit is not None:
                    found = hit
                    break
            dims.append(found)
        return config.replace(dims=tuple(dims))

    def step(self, config: ModelConfig, stage: int, k: int) -> ModelConfig | None:
        """``config`` with stage ``stage`` moved to its ``k``-th accepted width above (k > 0) or below."""
        d, h = config.dims[stage], config.heads[stage]
        width, moved = d, 0
        for _ in range(16 * abs(k)):
            width += h if k > 0 else -h
            if width < h:
                return None
            if self.ok(config, stage, width):
                moved += 1
                if moved == abs(k):
                    dims = list(config.dims)
                    dims[stage] = width
                    return config.replace(dims=tuple(dims))
        return None


def _hashable(block_mixers):
    for spec, occurrence in block_mixers:
        knobs = tuple(sorted((k, v) for k, v in spec.knobs.items()))
        yield (spec.name, knobs), occurrence


class _Counter:
    """Cached metric of (dims, depths); ``None`` for a shape the mechanism cannot take."""

    def __init__(self, measure: Callable[[ModelConfig], float]):
        self.measure, self.cache = measure, {}

    def __call__(self, config: ModelConfig) -> float | None:
        key = (config.dims, config.depths)
        if key not in self.cache:
            try:
                self.cache[key] = float(self.measure(config.validate()))
            except AttnZooError:  # e.g. a width whose reduced channels do not split into the heads
                self.cache[key] = None
        return self.cache[key]

    @property
    def evaluations(self) -> int:
        return len(self.cache)


def _rel(achieved: float | None, target: float) -> float:
    return math.inf if achieved is None else abs(achieved - target) / target


def match_budget(
    config: ModelConfig,
    budget: BudgetConfig,
    measure: Callable[[ModelConfig], float] | None = None,
) -> BudgetMatch:
    """Size ``config`` to ``budget``: width first, then depth. ``measure`` overrides the metric (tests)."""
    if budget.metric == "none":
        return BudgetMatch(config, "none", 0.0, 0.0, True, "no budget", 0, budget.tolerance)
    measure = measure or (
        lambda c: budget_metric(c, budget.metric, budget.resolution, device=budget.device, batch_size=budget.batch_size)
    )
    value = _Counter(measure)
    widths = _Widths(config)
    target, tol = float(budget.target), budget.tolerance
    best = _match_width(config, target, tol, value, widths)
    if _rel(value(best), target) > tol:
        best = _match_depth(config, best, target, tol, value, widths)
    achieved = value(best)
    if achieved is None:
        raise ConfigError(
            f"budget: no width of model {config.name!r} with mixer {'+'.join(config.mechanisms())} can be built"
        )
    ok = _rel(achieved, target) <= tol
    shape = f"dims {list(best.dims)}, depths {list(best.depths)}"
    head = f"{budget.metric} {achieved:.4g} vs target {target:.4g} ({achieved / target - 1:+.2%})"
    if ok:
        message = f"{head}: {shape}"
    else:
        message = _out_of_reach(config, best, budget, achieved, value)
    return BudgetMatch(best, budget.metric, target, achieved, ok, message, value.evaluations, tol)


def _out_of_reach(
    config: ModelConfig, best: ModelConfig, budget: BudgetConfig, achieved: float, value: _Counter
) -> str:
    mech = "+".join(config.mechanisms())
    what = f"budget {budget.metric} target {budget.target:.4g} is out of reach for {mech!r} on {config.name!r}"
    shape = f"dims {list(best.dims)}, depths {list(best.depths)}"
    smallest = _smallest(config)
    if achieved > budget.target and (best.dims, best.depths) == (smallest.dims, smallest.depths):
        return (
            f"{what}: the smallest model the matcher builds ({shape}) already has {achieved:.4g} "
            f"({achieved / budget.target - 1:+.2%}); raise the target or start from a smaller preset"
        )
    if achieved < budget.target and best.dims == scale_width(config, MULTIPLIER_RANGE[1]).dims:
        return (
            f"{what}: the largest model the matcher builds ({shape}) has only {achieved:.4g} "
            f"({achieved / budget.target - 1:+.2%}); lower the target or start from a larger preset"
        )
    return (
        f"{what} within {budget.tolerance:.1%}: the closest is {achieved:.4g} ({achieved / budget.target - 1:+.2%}) "
        f"with {shape}; widths move in multiples of the heads {list(config.heads)} and depths in block pairs. "
        "Loosen budget.tolerance, or set budget.strict = false to train the closest model"
    )


def _match_width(config: ModelConfig, target: float, tol: float, value: _Counter, widths: _Widths) -> ModelConfig:
    """The closest uniformly scaled model, then per-stage nudges if that is not close enough."""
    lo_m, hi_m = MULTIPLIER_RANGE
    points: dict[float, float] = {}  # multiplier -> metric, for the valid ones

    def scaled(m: float) -> ModelConfig:
        return widths.snap(scale_width(config, m))  # each stage at the nearest width its mechanisms accept

    def probe(m: float) -> float | None:
        m = min(max(m, lo_m), hi_m)
        v = value(scaled(m))
        if v is not None:
            points[m] = v
        return v

    lo, hi = None, None  # bracket: multipliers with metric below / at-or-above the target
    m = 1.0
    for _ in range(16):
        v = probe(m)
        if v is not None:
            if v < target:
                lo = m if lo is None else max(lo, m)
            else:
                hi = m if hi is None else min(hi, m)
            if _rel(v, target) <= tol / 4:
                break
        if (lo is not None and lo >= hi_m) or (hi is not None and hi <= lo_m):
            break  # the range's end is not enough
        if lo is not None and hi is not None and scaled(lo).dims == scaled(hi).dims:
            break
        m = _next_multiplier(points, target, lo, hi, m)
        if m in points or (lo is not None and hi is not None and (hi / lo) < 1.001):
            break
    if not points:
        return config
    base_m = min(points, key=lambda k: _rel(points[k], target))
    base = scaled(base_m)
    at_end = (lo is not None and lo >= hi_m) or (hi is not None and hi <= lo_m)
    if _rel(value(base), target) <= tol or at_end:  # close enough, or the range's end: nudges cannot help
        return base
    return _nudge(base, target, tol, value, widths)


def _next_multiplier(points: dict[float, float], target: float, lo: float | None, hi: float | None, m: float) -> float:
    """Secant step in log-log space from the two latest points; bisection when it would leave the bracket."""
    lo_m, hi_m = MULTIPLIER_RANGE
    recent = list(points.items())[-2:]
    if len(recent) == 2 and recent[0][1] != recent[1][1] and recent[0][0] != recent[1][0]:
        (m0, v0), (m1, v1) = recent
        slope = math.log(v1 / v0) / math.log(m1 / m0)
        slope = min(max(slope, 0.5), 4.0)
        guess = m1 * (target / v1) ** (1 / slope)
    else:  # one point: metrics grow about quadratically with width
        m1, v1 = recent[-1] if recent else (m, None)
        guess = m1 * math.sqrt(target / v1) if v1 else m1 * 2
    low = lo if lo is not None else lo_m
    high = hi if hi is not None else hi_m
    if not low < guess < high:
        guess = math.sqrt(low * high) if lo is not None and hi is not None else min(max(guess, lo_m), hi_m)
    return guess


def _nudge(base: ModelConfig, target: float, tol: float, value: _Counter, widths: _Widths) -> ModelConfig:
    """Move single stages to neighbouring accepted widths; see the module docstring."""
    n = base.num_stages

    def shifted(steps: tuple[int, ...]) -> ModelConfig | None:
        config = base
        for stage, k in enumerate(steps):
            if k:
                config = widths.step(config, stage, k)
                if config is None:
                    return None
        return config

    v0 = value(base)
    if v0 is None:
        return base
    deltas: list[tuple[float, float]] = []  # per stage: quadratic a*s + b*s^2 through the +1 / -1 points
    for i in range(n):
        measured = []
        for s in (1, -1):
            cand = shifted(tuple(s if j == i else 0 for j in range(n)))
            v = value(cand) if cand is not None else None
            measured.append(None if v is None else v - v0)
        up = measured[0] if measured[0] is not None else (-measured[1] if measured[1] is not None else 0.0)
        down = measured[1] if measured[1] is not None else -up
        deltas.append(((up - down) / 2, (up + down) / 2))
    scored = []
    for steps in itertools.product(range(-2, 3), repeat=n):
        if not any(steps):
            continue
        predicted = v0 + sum(a * s + b * s * s for (a, b), s in zip(deltas, steps))
        scored.append((abs(predicted - target), sum(map(abs, steps)), steps))
    scored.sort()
    candidates = [base] + [shifted(tuple(s if j == i else 0 for j in range(n))) for i in range(n) for s in (1, -1)]
    candidates += [shifted(steps) for _, _, steps in scored[:6]]
    measured_ok = [c for c in candidates if c is not None and value(c) is not None]
    within = [c for c in measured_ok if _rel(value(c), target) <= tol]
    if within:  # keep the width profile as close to the base model's as the tolerance allows
        return min(within, key=lambda c: (sum(a != b for a, b in zip(c.dims, base.dims)), _rel(value(c), target)))
    return min(measured_ok, key=lambda c: _rel(value(c), target))


def _depth_steps(config: ModelConfig) -> list[int]:
    return [2 if d % 2 == 0 else 1 for d in config.depths]  # block pairs keep alternating patterns whole


def _smallest(config: ModelConfig) -> ModelConfig:
    depths = tuple(2 if d % 2 == 0 else 1 for d in config.depths)
    return config.replace(dims=tuple(config.heads), depths=depths)


def _match_depth(
    config: ModelConfig, best: ModelConfig, target: float, tol: float, value: _Counter, widths: _Widths
) -> ModelConfig:
    """Depth changes when widths cannot get there; the first model within tolerance wins.

    Below the smallest width: stages lose block pairs, deepest first, until the target is reachable.
    Above the largest width (64x): nothing (that target is out of reach). Otherwise (the widths' steps are
    too coarse): one stage at a time gains or loses a block pair, and the width search runs again.
    """
    achieved = value(best)
    if achieved is None:
        return best
    steps = _depth_steps(config)
    order = sorted(range(config.num_stages), key=lambda i: -config.depths[i])
    if achieved < target and best.dims == scale_width(config, MULTIPLIER_RANGE[1]).dims:
        return best
    if achieved > target and best.dims == tuple(config.heads):
        current = config
        while True:
            stage = next((i for i in order if current.depths[i] - steps[i] >= 1), None)
            if stage is None:
                return best
            depths = list(current.depths)
            depths[stage] -= steps[stage]
            current = config.replace(depths=tuple(depths))
            candidate = _match_width(current, target, tol, value, widths)
            if _rel(value(candidate), target) < _rel(value(best), target):
                best = candidate
            if _rel(value(best), target) <= tol or (value(candidate) or math.inf) < target:
                return best
    for i in order:
        for direction in (1, -1):
            depths = list(config.depths)
            depths[i] += direction * steps[i]
            if depths[i] < 1:
                continue
            candidate = _match_width(config.replace(depths=tuple(depths)), target, tol, value, widths)
            if _rel(value(candidate), target) < _rel(value(best), target):
                best = candidate
            if _rel(value(best), target) <= tol:
                return best
    return best
