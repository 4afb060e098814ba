"""Equal budgets: size each mechanism to a target (parameters, MACs at a resolution, or latency).

Width first: one multiplier scales every stage (each stage's width a multiple of its head count), found by
bisection, then each stage's width is nudged by one head-multiple at a time to get closer. If the target is
still missed, depth next: the deepest stage gains or loses a block pair, and the width search runs again.
Every result records the target, what was achieved and the relative error; a target out of reach says so.
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


@dataclasses.dataclass(frozen=True)
class Budget:
    """``metric`` in params | macs | latency | none; ``target`` in units (params, MACs, ms); ``resolution``
    for macs/latency (default: the model's img_size)."""

    metric: str = "none"
    target: float = 0.0
    resolution: int | None = None
    tolerance: float = 0.02

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"budget metric {self.metric!r} unknown; allowed: {', '.join(METRICS)}")
        if self.metric != "none" and not self.target > 0:
            raise ConfigError(f"budget target must be > 0 for metric {self.metric!r}, got {self.target!r}")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"budget tolerance must be in (0, 1), got {self.tolerance!r}")


@dataclasses.dataclass(frozen=True)
class BudgetMatch:
    config: ModelConfig
    metric: str
    target: float
    achieved: float
    within_tolerance: bool
    message: str

    @property
    def relative_error(self) -> float:
        return (self.achieved - self.target) / self.target if self.target else 0.0

    def to_row(self) -> dict[str, Any]:
        return {
            "budget_metric": self.metric,
            "budget_target": self.target,
            "budget_achieved": self.achieved,
            "budget_error": self.relative_error,
            "budget_ok": float(self.within_tolerance),
        }


def budget_metric(config: ModelConfig, metric: str, resolution: int | None = None) -> float:
    """Parameters or MACs (one image at ``resolution``) of ``config``, counted on the meta device when it
    can be (no memory, no compute), else on CPU. Latency is measured on CPU at batch 1."""
    from attn_zoo.backbone.harness import Backbone
    from attn_zoo.measure.counting import count_model

    res = resolution or config.img_size
    if metric == "params":
        with torch.device("meta"):
            return float(sum(p.numel() for p in Backbone(config).parameters()))
    if metric == "macs":
        try:
            with torch.device("meta"):
                model = Backbone(config)
            return float(count_model(model, res, in_chans=config.in_chans, device="meta")["macs"])
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel: count for real
            return float(count_model(Backbone(config), res, in_chans=config.in_chans)["macs"])
    if metric == "latency":
        from attn_zoo.measure.latency import measure_latency

        model = Backbone(config).eval()
        x = torch.randn(1, config.in_chans, res, res)
        with torch.no_grad():
            return measure_latency(lambda: model(x), warmup=2, repeats=7)["median_ms"]
    raise ConfigError(f"budget metric {metric!r} unknown; allowed: {', '.join(METRICS)}")


def scale_width(config: ModelConfig, multiplier: float) -> ModelConfig:
    """Every stage's width times ``multiplier``, rounded to a multiple of its head count (at least one)."""
    dims = tuple(max(h, round(d * multiplier / h) * h) for d, h in zip(config.dims, config.heads))
    return config.replace(dims=dims)


def match_budget(
    config: ModelConfig, budget: Budget, measure: Callable[[ModelConfig], float] | None = None
) -> BudgetMatch:
    """Size ``config`` to ``budget`` (width first, then depth). ``measure`` overrides the metric (tests)."""
    if budget.metric == "none":
        return BudgetMatch(config, "none", 0.0, 0.0, True, "no budget")
    measure = measure or (lambda c: budget_metric(c, budget.metric, budget.resolution))
    cache: dict[tuple, float | None] = {}

    def value(c: ModelConfig) -> float | None:
        key = (c.dims, c.depths)
        if key not in cache:
            try:
                cache[key] = measure(c.validate())
            except AttnZooError:  # a width the mechanism cannot take (e.g. SSA's int(C * r_c) % heads)
                cache[key] = None
        return cache[key]

    best = _match_width(config, budget, value)
    tried_depths = {config.depths}
    for stage in sorted(range(config.num_stages), key=lambda i: -config.depths[i]):
        if _rel(value(best), budget.target) <= budget.tolerance:
            break
        step = 2 if config.depths[stage] % 2 == 0 else 1  # keep alternating patterns whole
        grow = value(best) is not None and value(best) < budget.target and best.dims == scale_width(best, 8).dims
        direction = 1 if grow else -1
        depths = list(best.depths)
        depths[stage] = max(step, depths[stage] + direction * step)
        if tuple(depths) in tried_depths:
            continue
        tried_depths.add(tuple(depths))
        candidate = _match_width(config.replace(depths=tuple(depths)), budget, value)
        if _rel(value(candidate), budget.target) < _rel(value(best), budget.target):
            best = candidate
    achieved = value(best)
    if achieved is None:
        raise ConfigError(f"budget: no width of model {config.name!r} with mixer {config.mechanisms()} can be built")
    ok = _rel(achieved, budget.target) <= budget.tolerance
    msg = f"{budget.metric} {achieved:.4g} vs target {budget.target:.4g} ({(achieved / budget.target - 1):+.2%})" + (
        "" if ok else f": out of reach within {budget.tolerance:.0%} for this mechanism"
    )
    return BudgetMatch(best, budget.metric, budget.target, achieved, ok, msg)


def _rel(achieved: float | None, target: float) -> float:
    return math.inf if achieved is None else abs(achieved - target) / target


def _match_width(config: ModelConfig, budget: Budget, value: Callable[[ModelConfig], float | None]) -> ModelConfig:
    lo, hi = 1 / 64, 64.0
    # bisection in log space on the multiplier; metrics grow monotonically with width
    for _ in range(24):
        mid = math.sqrt(lo * hi)
        v = value(scale_width(config, mid))
        if v is None:
            v = value(scale_width(config, mid * 1.01))
        if v is not None and v < budget.target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.005 or scale_width(config, lo).dims == scale_width(config, hi).dims:
            break
    base = scale_width(config, math.sqrt(lo * hi))
    best, best_err = base, _rel(value(base), budget.target)
    # nudge stage widths by one head-multiple, fewest stages first, so the width profile stays as close to
    # the base model's as the tolerance allows
    for count in range(1, config.num_stages + 1):
        if best_err <= budget.tolerance:
            break
        for steps in itertools.product((-1, 0, 1), repeat=config.num_stages):
            if sum(map(abs, steps)) != count:
                continue
            dims = tuple(max(h, d + s * h) for d, h, s in zip(base.dims, base.heads, steps))
            candidate = base.replace(dims=dims)
            err = _rel(value(candidate), budget.target)
            if err < best_err:
                best, best_err = candidate, err
    return best
