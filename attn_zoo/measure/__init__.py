"""Measurement, kept apart from the models: counts, latency, memory, scaling, receptive field, environment."""

from attn_zoo.measure.counting import count_model, count_params
from attn_zoo.measure.environment import environment
from attn_zoo.measure.latency import measure_latency

__all__ = ["count_model", "count_params", "environment", "measure_latency"]
