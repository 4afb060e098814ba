"""The conformance kit: does a mechanism keep the contract every mechanism in the zoo keeps?

From Python or a plugin's own pytest suite::

    from attn_zoo.testing import CHECKS, assert_check, check_mechanism

    report = check_mechanism("my_attn", window=4)   # a registered name (or a Mixer subclass) and knobs
    print(report)                                   # one line per check; failures say what to fix

    @pytest.mark.parametrize("check", CHECKS)       # one pytest test per check
    def test_conforms(check):
        assert_check(MyAttention, check)

From the shell: ``attn-zoo check my_attn [--knob window=4]``.

The checks (:data:`CHECKS`):

- ``shape``: ``(B, H, W, C) -> (B, H, W, C)`` in the input's dtype, finite, square and non-square maps; a
  wrong channel count or rank raises :class:`~attn_zoo.errors.MechanismInputError`; context left unchanged.
- ``sizes``: odd, tiny (1x1, 2x2) and non-multiple maps give the right shape, or an ``AttnZooError`` naming the
  mechanism (a raw ``RuntimeError`` / ``IndexError`` is a failure).
- ``batch``: a batch of 3 equals its images one at a time.
- ``gradients``: at a 16x16 map, every parameter (and the per-stage context's) and the input get finite, nonzero
  gradients.
- ``dependence``: at 8x8, 7x9, 13x11 and 16x16 maps, every input position, every input channel and (where the
  block reads one) the stage context affect the output, and every output position and channel changes with the
  input (probed by per-position / per-channel gradients of a random output projection); what the mechanism
  declares in ``ignores`` is exempted and named.
- ``determinism``: the same seed builds the same parameters; the same input twice gives bitwise the same output.
- ``macs``: the declared ``attention_macs(H, W)`` is within 1% of ``FlopCounterMode`` at two widths and head
  counts (the ``dim``/``num_heads`` asked for, and dim 8 with 2 heads or the next that builds), alone and in a
  harness.
- ``dtypes``: float32 and bfloat16 run, stay finite, keep the input's dtype; bfloat16 within 5% of float32.
- ``state_dict``: save and load into a fresh instance built with another seed gives bitwise the same outputs.
- ``harness``: forward (train, eval) and backward through a tiny 4-stage ``zoo_s32`` (maps 16, 8, 4, 2); no
  block modifies the shared stage context; every mixer and context parameter gets a gradient.
"""

from __future__ import annotations

from typing import Any

from attn_zoo.mechanisms.base import Mixer
from attn_zoo.registry import isolated_registry
from attn_zoo.testing import checks as checks  # the built-in checks, registered on the kit (the framework)
from attn_zoo.testing.kit import CheckResult, Report, check_mechanism, check_names

CHECKS: tuple[str, ...] = check_names()


def assert_conforms(target: str | type[Mixer], **knobs: Any) -> Report:
    """Run every check; raise ``AssertionError`` with the whole report if any fails, else return the report."""
    report = check_mechanism(target, **knobs)
    if not report.ok:
        raise AssertionError(f"{', '.join(report.failed)} failed\n{report}")
    return report


def assert_check(target: str | type[Mixer], check: str, **knobs: Any) -> CheckResult:
    """Run one check (a name from :data:`CHECKS`); raise ``AssertionError`` saying what to fix if it fails."""
    result = check_mechanism(target, checks=[check], **knobs).results[0]
    if not result.ok:
        raise AssertionError(str(result))
    return result


def conformance_cases() -> list[str]:
    """The check names, for ``@pytest.mark.parametrize("check", conformance_cases())``."""
    return list(CHECKS)


__all__ = [
    "CHECKS",
    "CheckResult",
    "Report",
    "assert_check",
    "assert_conforms",
    "check_mechanism",
    "conformance_cases",
    "isolated_registry",
]
