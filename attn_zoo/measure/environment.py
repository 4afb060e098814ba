"""What a measurement ran on: versions, device, threads, dtype, commit. Stored with every result row."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

import attn_zoo


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The checkout's commit, with ``+dirty`` when tracked files differ; ``None`` outside a git checkout.

    ``$ATTN_ZOO_COMMIT`` overrides it, for a copy of the code without its own ``.git`` (a copy placed inside
    another checkout would otherwise report that checkout's commit)."""
    return os.environ.get("ATTN_ZOO_COMMIT") or _git_commit()


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    root = Path(attn_zoo.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32) -> dict[str, Any]:
    """Everything a measurement depends on besides the model: versions, machine, device, threads, dtype, commit."""
    device = torch.device(device)
    dtype_name = str(dtype).replace("torch.", "")
    env = {
        "attn_zoo": attn_zoo.__version__,
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "natten": _version("natten"),
        "xformers": _version("xformers"),
        "fvcore": _version("fvcore"),
        "numpy": _version("numpy"),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": _cpu_capability(),
        "cpu_caches": cpu_caches(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "dtype": dtype_name,
        "load_avg_1m": cpu_load(),
    }
    if device.type == "cuda":  # pragma: no cover - needs CUDA
        props = torch.cuda.get_device_properties(device)
        env.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            device_memory_mb=props.total_memory / 2**20,
            device_capability=f"{props.major}.{props.minor}",
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    return env


def cpu_load() -> float | None:
    """The 1-minute load average: above the number of cores, other work shares the CPU with a measurement."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on Windows
        return None


def _cpu_capability() -> str | None:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # pragma: no cover - old torch
        return None


@lru_cache(maxsize=1)
def cpu_caches() -> str | None:
    """The CPU caches of core 0 as the OS reports them (``L1d 48K, L1i 64K, L2 2048K, L3 491520K``), or None.

    oneDNN sizes the blocks of its convolution kernels from these, and the blocking sets the order in which a
    convolution sums: two machines of the same CPU model whose VMs report different caches may give different
    low bits in MSA-Conv's dense 3x3 convolutions (docs/backends.md, "Determinism"). Recorded so that rows can
    tell such machines apart."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        parts = []
        for index in sorted(root.glob("index*")):
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
            parts.append(f"L{level}{suffix} {(index / 'size').read_text().strip()}")
    except OSError:
        return None
    return ", ".join(parts) or None
