"""Benchmarks live apart from the tests; every saved run records the machine and the library versions."""

from __future__ import annotations


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    from attn_zoo.measure.environment import environment

    env = environment("cpu")
    machine_info["attn_zoo"] = {k: env[k] for k in ("commit", "torch", "timm", "natten", "cpu", "cpu_capability")}
    machine_info["attn_zoo"]["torch_threads"] = torch.get_num_threads()
