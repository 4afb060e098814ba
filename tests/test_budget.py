"""The budget matcher: lands within 2% on params and MACs, says when a target is out of reach, records every row."""

from __future__ import annotations

import pytest

from attn_zoo.backbone.config import MixerSpec
from attn_zoo.backbone.presets import resolve_config
from attn_zoo.budget import Budget, BudgetOutOfReach, budget_metric, match_budget, scale_width
from attn_zoo.errors import ConfigError, KnobError
from attn_zoo.grid.cell import run_cell
from attn_zoo.grid.suite import load_suite
from attn_zoo.registry import PerStage

pytestmark = pytest.mark.usefixtures("one_thread")


def zoo(mechanism: str, **changes):
    knobs = {"window": 4} if mechanism == "swin" else {}
    return resolve_config({"preset": "zoo_s32"}).replace(mixer=MixerSpec(mechanism, knobs), num_classes=10, **changes)


@pytest.mark.parametrize("mechanism", ["global", "swin"])
@pytest.mark.parametrize(("metric", "target"), [("params", 3e5), ("params", 1.5e6), ("macs", 1e7), ("macs", 4e7)])
def test_lands_within_two_percent(mechanism, metric, target):
    config = zoo(mechanism)
    match = match_budget(config, Budget(metric, target))
    assert match.within_tolerance, match.message
    recount = budget_metric(match.config, metric)  # an independent count of the returned model
    assert abs(recount / target - 1) <= 0.02 and recount == match.achieved
    assert match.config.depths == config.depths  # width alone was enough
    assert all(d % h == 0 for d, h in zip(match.config.dims, match.config.heads))
    assert match.evaluations <= 30  # a few seconds per mechanism
    row = match.to_row()
    assert row["budget_target"] == target and row["budget_achieved"] == match.achieved
    assert row["budget_error"] == pytest.approx(match.achieved / target - 1) and row["budget_ok"] == 1.0


def test_unreachable_targets_say_so():
    small = match_budget(zoo("global"), Budget("params", 10))
    assert not small.within_tolerance and small.to_row()["budget_ok"] == 0.0
    assert "params target 10 is out of reach for 'global' on 'zoo_s32'" in small.message
    assert "the smallest model the matcher builds (dims [3, 6, 12, 24], depths [2, 2, 2, 2])" in small.message
    with pytest.raises(BudgetOutOfReach, match="out of reach"):
        small.require()
    large = match_budget(zoo("swin"), Budget("macs", 1e13))
    assert "the largest model the matcher builds" in large.message and "lower the target" in large.message


def test_depth_shrinks_when_the_narrowest_model_is_still_too_big():
    config = zoo("global", depths=(2, 2, 6, 2))
    narrowest = budget_metric(scale_width(config, 1 / 64), "params")
    match = match_budget(config, Budget("params", 0.8 * narrowest))
    assert match.within_tolerance, match.message
    assert sum(match.config.depths) < sum(config.depths) and match.config.depths[2] < 6


def test_coarse_widths_report_the_closest_and_the_way_out():
    # a metric that jumps in big steps: no width lands within 0.1%
    def chunky(config):
        return float(sum(d * d * n for d, n in zip(config.dims, config.depths)) // 5000 * 5000)

    match = match_budget(zoo("global"), Budget("params", 123_456, tolerance=0.001), measure=chunky)
    assert not match.within_tolerance
    assert "within 0.1%: the closest is" in match.message and "Loosen budget.tolerance" in match.message


def test_latency_target_with_a_stand_in_clock():
    # latency is measured in real use; a deterministic stand-in checks the search itself
    def clock(config):
        return 1e-6 * budget_metric(config, "macs") + 0.5

    match = match_budget(zoo("global"), Budget("latency", 20.0), measure=clock)
    assert match.within_tolerance and abs(clock(match.config) / 20.0 - 1) <= 0.02


def test_widths_the_mechanism_rejects_are_stepped_over():
    def picky(config):
        if config.dims[0] % 2:
            raise KnobError(f"odd width {config.dims[0]}")
        return float(sum(12 * d * d * n for d, n in zip(config.dims, config.depths)))

    match = match_budget(zoo("global"), Budget("params", 8e5), measure=picky)
    assert match.within_tolerance and match.config.dims[0] % 2 == 0 and picky(match.config) == match.achieved


def test_widths_are_snapped_to_what_each_stage_accepts():
    # SSA with r_c = 1.25 needs int(1.25 C) to divide by the heads: most multiples of the heads fail
    knobs = {"r_n": PerStage((4, 2, 1, 1))}
    config = resolve_config({"preset": "zoo_s32"}).replace(mixer=MixerSpec("ssa", knobs), num_classes=10)
    match = match_budget(config, Budget("macs", 2e7))
    assert match.within_tolerance, match.message
    dims, heads = match.config.dims, match.config.heads  # r_c = 1.25 applies where keys are pooled (r_n > 1)
    assert int(dims[0] * 1.25) % heads[0] == 0 and int(dims[1] * 1.25) % heads[1] == 0
    assert int(scale_width(config, 0.8).dims[0] * 1.25) % heads[0]  # plain scaling lands on refused widths


def test_budget_validation():
    with pytest.raises(ConfigError, match="budget metric 'flops' unknown; allowed: params, macs, latency, none"):
        Budget("flops", 1e6)
    with pytest.raises(ConfigError, match="budget target must be > 0"):
        Budget("macs", 0)


def test_strict_cell_fails_with_the_message_and_keeps_the_budget_row(tmp_path):
    suite_file = tmp_path / "unreachable.toml"
    suite_file.write_text(
        '[model]\npreset = "zoo_s32"\n[budget]\nmetric = "params"\ntarget = 10\n'
        '[measure]\nlatency = false\n[grid]\nmechanism = ["global"]\n'
    )
    result = run_cell(load_suite(suite_file).cells[0].spec)
    assert result["status"] == "failed" and "out of reach" in result["reason"]
    assert result["metrics"]["budget_target"] == 10 and result["metrics"]["budget_ok"] == 0.0
