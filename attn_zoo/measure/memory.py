"""Peak memory of a forward pass and of a training step, measured, not estimated.

What the number is (both devices): the high-water mark of memory while a fresh copy of the model is put on
the device, an input batch is made, and two calls of the mode run (the second sees whatever the first left,
e.g. the optimizer state of a training step), minus the memory in use just before. So ``peak_mem_fwd_mb``
is weights + input + the largest set of live activations and workspaces of inference, and
``peak_mem_train_mb`` adds gradients, the AdamW state and what backward keeps alive: what must fit.

How it is measured:

- ``cuda``: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensor memory the
  caching allocator handed out; its reserved-but-free cache is not counted).
- ``worker`` (CPU default): a fresh Python process builds the model from its config and measures its own
  resident set: the Linux peak-RSS counter (``VmHWM``) is reset through ``/proc/self/clear_refs`` right
  before, and the RSS just before is subtracted. The worker runs with ``MALLOC_MMAP_THRESHOLD_=131072``, so
  glibc gives every tensor its own mapping and returns it on free: RSS then follows live tensor memory
  instead of a heap that keeps freed chunks; and the worker runs each call once before measuring, so code
  pages that the first call of a kernel loads are not counted. It costs a process start (about 5 s).
- ``rss``: the same in the calling process (Linux), without the allocator setting (changing it would slow
  every later allocation of the caller): freed chunks the heap kept can be reused unseen or show up as
  extra, so expect a few MB of noise. Used for quick checks and the largest-batch search on CPU.

Elsewhere than Linux the worker falls back to ``ru_maxrss`` (no reset), which counts first-call code pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attn_zoo.errors import ConfigError
from attn_zoo.measure.steps import MODES, StepOptions, make_step, prepare

METHODS = ("auto", "cuda", "worker", "rss")
_MB = 2**20
_libc: Any = None


def weights_mb(model: nn.Module) -> float:
    """Parameters and buffers, in MiB."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / _MB


# -- the resident set on Linux ---------------------------------------------------------------------------------
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def _trim_heap() -> None:
    """Give the heap's free pages back to the OS so the RSS before a measurement is live memory."""
    global _libc
    gc.collect()
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS counter to its current RSS; ``False`` where that is not possible
    (needs Linux >= 4.0 and a writable ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kb("VmHWM")
    except OSError:
        return False
    return True


def _peak_rss_mb(fn: Callable[[], None]) -> float:
    _trim_heap()
    if reset_peak_rss():
        before = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - before) / 1024
    # ru_maxrss cannot be reset: only meaningful in a fresh process whose peak so far is the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return (after - before) * scale / _MB


def _peak_cuda_mb(fn: Callable[[], None], device: torch.device) -> float:  # pragma: no cover - needs CUDA
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / _MB


def peak_in_process(fn: Callable[[], None], device: str | torch.device = "cpu") -> float:
    """MiB: high-water mark of memory during ``fn()`` minus the memory in use just before (this process)."""
    device = torch.device(device)
    if device.type == "cuda":
        return _peak_cuda_mb(fn, device)
    return _peak_rss_mb(fn)


def call_peak_mb(model: nn.Module, mode: str, options: StepOptions, device: torch.device, calls: int = 2) -> float:
    """Peak of: a copy of ``model`` put on ``device``, an input made, ``calls`` calls of ``mode``."""

    def run() -> None:
        prepared = prepare(model, options, device)
        step = make_step(prepared, mode, options, device)
        for _ in range(calls):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        del step, prepared

    try:
        return peak_in_process(run, device)
    finally:
        gc.collect()


def resolve_method(method: str, device: torch.device) -> str:
    if method not in METHODS:
        raise ConfigError(f"memory method {method!r} unknown; allowed: {', '.join(METHODS)}")
    if method == "auto":
        return "cuda" if device.type == "cuda" else "worker"
    if (method == "cuda") != (device.type == "cuda"):
        raise ConfigError(f"memory method {method!r} does not measure device {device}")
    return method


def measure_memory(
    model: nn.Module | None,
    modes: Sequence[str],
    options: StepOptions,
    device: str | torch.device = "cpu",
    *,
    method: str = "auto",
    config: Mapping[str, Any] | None = None,
    threads: int = 0,
    plugins: Sequence[str | Path] | None = None,
) -> dict[str, float]:
    """``peak_mem_<mode>_mb`` for each mode (``fwd``, ``fwdbwd``, ``train``) and ``weights_mb``.

    ``method="worker"`` needs ``config`` (a :class:`~attn_zoo.backbone.config.ModelConfig` dict): the worker
    builds the model from it, after loading ``plugins`` (see :func:`run_worker`). The other methods use
    ``model``.
    """
    device = torch.device(device)
    method = resolve_method(method, device)
    for mode in modes:
        if mode not in MODES:
            raise ConfigError(f"memory mode {mode!r} unknown; allowed: {', '.join(MODES)}")
    if method == "worker":
        if config is None:
            raise ConfigError("memory method 'worker' needs the model's config (it rebuilds the model)")
        return run_worker(config, modes, options, threads=threads, plugins=plugins)
    assert model is not None
    out = {"weights_mb": weights_mb(model)}
    for mode in modes:
        out[f"peak_mem_{mode}_mb"] = call_peak_mb(model, mode, options, device)
    return out


# -- the isolated worker --------------------------------------------------------------------------------------
def run_worker(
    config: Mapping[str, Any],
    modes: Sequence[str],
    options: StepOptions,
    *,
    threads: int = 0,
    timeout_s: float = 1800,
    plugins: Sequence[str | Path] | None = None,
) -> dict[str, float]:
    """Measure in a fresh process (see the module docstring); returns what :func:`measure_memory` returns.

    ``plugins``: the plugin files the worker loads before it builds the model, so that it registers the same
    mechanisms (default: the files loaded in this process, :func:`attn_zoo.registry.plugin_files`)."""
    import dataclasses

    if plugins is None:
        from attn_zoo.registry import plugin_files

        plugins = plugin_files()
    job = {
        "config": dict(config),
        "modes": list(modes),
        "options": dataclasses.asdict(options),
        "threads": threads or torch.get_num_threads(),
        "plugins": [str(p) for p in plugins],
    }
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-m", "attn_zoo.measure.memory"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stderr or "").strip().splitlines()[-4:])
        raise RuntimeError(f"memory worker failed (exit {proc.returncode}): {tail}")
    return {k: float(v) for k, v in json.loads(lines[-1]).items()}


def _worker_main() -> int:
    job = json.loads(sys.stdin.read())
    torch.set_num_threads(int(job["threads"]))
    from attn_zoo.backbone.config import ModelConfig
    from attn_zoo.backbone.harness import Backbone
    from attn_zoo.registry import load_plugin_file

    for plugin in job["plugins"]:
        load_plugin_file(plugin)
    options = StepOptions(**job["options"])
    device = torch.device("cpu")
    model = Backbone(ModelConfig.from_dict(job["config"]))
    out = {"weights_mb": weights_mb(model)}
    for mode in job["modes"]:
        call_peak_mb(model, mode, options, device)  # first calls load kernels' code pages; not what we measure
        out[f"peak_mem_{mode}_mb"] = call_peak_mb(model, mode, options, device)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
