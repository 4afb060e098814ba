"""Measurement, kept apart from the models: counts, latency, memory, efficiency, scaling, receptive field,
environment. ``measure_model`` (in :mod:`attn_zoo.measure.profile`) is what a grid cell calls; the scaling fits
are in :mod:`attn_zoo.measure.scaling` (also ``python -m attn_zoo.cli.scaling STORE``)."""

from attn_zoo.measure.counting import analytic_attention_macs, count_flops, count_model, count_params, fvcore_macs
from attn_zoo.measure.efficiency import matmul_peak_gflops
from attn_zoo.measure.environment import environment
from attn_zoo.measure.erf import erf_map, erf_radii, measure_erf
from attn_zoo.measure.latency import measure_latency, repeatability
from attn_zoo.measure.memory import measure_memory
from attn_zoo.measure.profile import (
    MEASURE_DEFAULTS,
    MeasureConfig,
    measure_after_training,
    measure_model,
    resolve_measure,
)

__all__ = [
    "MEASURE_DEFAULTS",
    "MeasureConfig",
    "analytic_attention_macs",
    "count_flops",
    "count_model",
    "count_params",
    "environment",
    "erf_map",
    "erf_radii",
    "fvcore_macs",
    "matmul_peak_gflops",
    "measure_after_training",
    "measure_erf",
    "measure_latency",
    "measure_memory",
    "measure_model",
    "repeatability",
    "resolve_measure",
]
