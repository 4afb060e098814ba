"""Benchmarks live apart from the tests; every saved run records the machine and the library versions."""

from __future__ import annotations

import os


def pytest_benchmark_update_machine_info(config, machine_info):
    from attn_zoo.measure.environment import environment

    env = environment("cpu")
    info = {k: env[k] for k in ("commit", "torch", "timm", "natten", "cpu", "cpu_count", "cpu_capability")}
    info["bench_threads"] = int(os.environ.get("ATTN_ZOO_BENCH_THREADS", "2"))  # what bench_mechanisms.py uses
    info["load_avg_1m"] = env["load_avg_1m"]  # above cpu_count: other work shared the CPU
    machine_info["attn_zoo"] = info
