"""What a cell measures, in one call: ``measure_model(model, config, measure_spec, device) -> {metric: value}``.

A suite's ``[measure]`` table (keys and defaults in :data:`MEASURE_DEFAULTS`, checked by
:func:`resolve_measure`) says what to measure; the returned names are the store's metric columns, listed with
their meaning in docs/measurement.md and in :data:`METRIC_DOCS`. Every measurement runs on a copy of the
model, so the caller's model (weights, mode, dtype, device) is left as it was.
"""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attn_zoo.errors import ConfigError
from attn_zoo.layers.stems import stem_out_size
from attn_zoo.measure import machine
from attn_zoo.measure.counting import analytic_attention_macs, count_model
from attn_zoo.measure.efficiency import efficiency, matmul_peak_gflops, train_step_efficiency
from attn_zoo.measure.environment import cpu_load
from attn_zoo.measure.erf import measure_erf
from attn_zoo.measure.latency import LATENCY_KEYS, measure_latency
from attn_zoo.measure.memory import METHODS, call_peak_mb, measure_memory, weights_mb
from attn_zoo.measure.steps import DTYPES, MODES, StepOptions, make_step, prepare
from attn_zoo.typecheck import convert, type_name


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    r"""What a cell measures (``[measure]`` in a suite file): every key typed, with its default.

    Built by :meth:`from_dict` (unknown keys, wrong types and bad values are one-line ``ConfigError``\ s
    naming the key); :meth:`to_dict` is the plain table a cell spec stores."""

    # where and how
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    threads: int = 0  # torch.set_num_threads; 0 leaves torch's default (recorded either way)
    dtype: str = "float32"  # float32 | bfloat16 | float16: the model's and the input's dtype
    amp: bool = False  # autocast to bfloat16 around the forward pass
    channels_last: bool = False  # channels-last image and conv weights (the stem's and downsamplers' convs)
    compile: bool = False  # torch.compile the model (compilation happens in the warm-up)
    batch_size: int = 1
    # what
    count: bool = True  # params, MACs, FLOPs, attention MACs (FlopCounterMode) and the formula's attention MACs
    fvcore: bool = False  # fvcore_macs cross-check column (TorchScript trace; skips fused attention)
    latency: bool = True  # forward latency and throughput
    forward_backward: bool = False  # latency of forward + backward
    train_step: bool = False  # latency and throughput of a full training step (AdamW)
    memory: bool = True  # peak memory of a forward pass and of a training step
    memory_method: str = "auto"  # auto | cuda | worker | rss (see attn_zoo.measure.memory)
    max_batch_mem_mb: float = 0.0  # > 0: the largest batch whose forward peak fits this many MiB, and its throughput
    efficiency: bool = True  # achieved GFLOP/s and the fraction of this machine's measured matmul peak
    erf: bool = False  # effective receptive field radii (untrained here; trained after training)
    erf_images: int = 8
    # the latency stopping rule
    warmup: int = 3
    repeats: int = 0  # > 0: exactly this many timed calls; 0: until target_ci, time_cap_s or max_repeats
    min_repeats: int = 5
    max_repeats: int = 200
    time_cap_s: float = 10.0  # per timed mode, once min_repeats are done
    target_ci: float = 0.02  # relative half-width of the median's 95% bootstrap CI

    @classmethod
    def from_dict(cls, table: Mapping[str, Any] | None = None) -> MeasureConfig:
        """Defaults merged with ``table``, every key and value checked; raises ``ConfigError`` naming the key."""
        table = dict(table or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(table) - set(names))
        if unknown:
            raise ConfigError(f"measure.{unknown[0]}: unknown key; allowed: {', '.join(names)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in table.items():
            ok, converted = convert(value, hints[key])
            if not ok:
                raise ConfigError(f"measure.{key} = {value!r}: must be {type_name(hints[key], 'prose')}")
            values[key] = converted
        return cls(**values).validate()

    @classmethod
    def coerce(cls, value: MeasureConfig | Mapping[str, Any] | None) -> MeasureConfig:
        """A ``MeasureConfig`` as it is, a table through :meth:`from_dict`."""
        return value if isinstance(value, MeasureConfig) else cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> MeasureConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> MeasureConfig:
        """Value checks (types already right)."""

        def bad(key: str, allowed: str) -> ConfigError:
            return ConfigError(f"measure.{key} = {getattr(self, key)!r}: {allowed}")

        device = self.device
        if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
            raise bad("device", "allowed: cpu, cuda, cuda:N")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"allowed: {', '.join(DTYPES)}")
        if self.memory_method not in METHODS:
            raise bad("memory_method", f"allowed: {', '.join(METHODS)}")
        for key, low in (("batch_size", 1), ("threads", 0), ("warmup", 0), ("repeats", 0), ("min_repeats", 1)):
            if getattr(self, key) < low:
                raise bad(key, f"must be >= {low}")
        if self.max_repeats < self.min_repeats:
            raise bad("max_repeats", f"must be >= min_repeats ({self.min_repeats})")
        if self.time_cap_s <= 0:
            raise bad("time_cap_s", "must be positive")
        if self.erf_images < 1:
            raise bad("erf_images", "must be >= 1")
        if self.max_batch_mem_mb < 0:
            raise bad("max_batch_mem_mb", "must be >= 0 (0: off)")
        if not 0 <= self.target_ci < 1:
            raise bad("target_ci", "must be in [0, 1) (0.02 = +-2% of the median)")
        return self


#: the ``[measure]`` keys and their defaults (docs/measurement.md)
MEASURE_DEFAULTS: dict[str, Any] = MeasureConfig().to_dict()

_LATENCY_MODES = {"latency": "fwd", "forward_backward": "fwdbwd", "train_step": "train"}

#: metric name -> meaning (``{mode}`` is fwd, fwdbwd or train)
METRIC_DOCS: dict[str, str] = {
    "params": "parameters",
    "flops": "FLOPs of one forward pass of one image, as FlopCounterMode counts them (2 per MAC)",
    "macs": "multiply-accumulates of one forward pass of one image (flops / 2; the papers' 'FLOPs')",
    "attention_flops": "the part of flops inside the token mixers and their stage contexts",
    "attention_macs": "the part of macs inside the token mixers and their stage contexts (counted)",
    "attention_macs_formula": "the mechanisms' declared formulas summed over the model (analytic)",
    "fvcore_macs": "fvcore's count (skips fused attention: a cross-check, not the number)",
    "tokens": "tokens of the first stage (the stem's output grid, about (img_size / patch) ** 2)",
    "latency_{mode}_median_ms": "median time of one call of the mode at batch_size",
    "latency_{mode}_iqr_ms": "interquartile range of the timed calls",
    "latency_{mode}_p95_ms": "95th percentile",
    "latency_{mode}_min_ms": "fastest call",
    "latency_{mode}_mean_ms": "mean",
    "latency_{mode}_std_ms": "standard deviation",
    "latency_{mode}_ci_low_ms": "95% bootstrap CI of the median, low end",
    "latency_{mode}_ci_high_ms": "95% bootstrap CI of the median, high end",
    "latency_{mode}_ci_rel": "half-width of that CI relative to the median",
    "latency_{mode}_repeats": "timed calls made",
    "latency_{mode}_converged": "1 when the CI target was met, 0 when the time cap or max_repeats stopped it",
    "latency_{mode}_warmup": "untimed calls made first",
    "latency_median_ms": "alias of latency_fwd_median_ms (the report's latency column)",
    "latency_{mode}_times_ms": "every timed call (a list; the store keeps it in its samples table)",
    "machine_wait_s": "seconds the cell waited for the other cells of the run to stop computing before timing",
    "machine_locked": "1 when the figures were taken holding the machine alone (a grid worker), else 0",
    "cpu_load_before_1m": "the 1-minute load average when the timed figures started",
    "cpu_load_after_1m": "the 1-minute load average when they ended",
    "cpu_load_1m": "the machine's 1-minute load average when timing started (above its core count: shared CPU)",
    "compile_s": "seconds of the first (compiling) call, with compile = true",
    "throughput_img_s": "images per second of the forward pass at batch_size",
    "throughput_train_img_s": "images per second of the training step at batch_size",
    "weights_mb": "parameters and buffers, MiB",
    "peak_mem_{mode}_mb": "peak memory of the mode: weights + input + activations (+ grads, optimizer state), MiB",
    "act_mem_fwd_mb": "peak_mem_fwd_mb minus weights_mb",
    "max_batch": "largest batch (doubling from batch_size) whose forward peak fits max_batch_mem_mb",
    "throughput_max_batch_img_s": "forward images per second at max_batch",
    "peak_mem_max_batch_mb": "forward peak at max_batch, MiB",
    "gflops_achieved": "forward flops * batch_size / forward median latency, GFLOP/s",
    "matmul_peak_gflops": "this machine's measured large-matmul GFLOP/s in the same dtype and threads",
    "peak_fraction": "gflops_achieved / matmul_peak_gflops",
    "train_gflops_achieved": "3 x forward flops (6 x MACs) * batch_size / training-step median latency, GFLOP/s; in "
    "a trained cell: 2 x train_macs / train_time_s (measure.efficiency.training_efficiency)",
    "train_peak_fraction": "train_gflops_achieved / matmul_peak_gflops",
    "erf_r50": "radius (pixels) holding 50% of the effective receptive field's mass, untrained model",
    "erf_r90": "radius holding 90%",
    "erf_r50_rel": "erf_r50 / the distance from the centre point to the farthest corner",
    "erf_r90_rel": "erf_r90 / the distance from the centre point to the farthest corner",
    "erf_trained_r50": "erf_r50 of the trained model (and _r90, _r50_rel, _r90_rel)",
}


def resolve_measure(table: MeasureConfig | Mapping[str, Any] | None = None) -> MeasureConfig:
    """``[measure]`` defaults merged with ``table`` and checked (:meth:`MeasureConfig.from_dict`)."""
    return MeasureConfig.coerce(table)


def validate_measure(spec: MeasureConfig | Mapping[str, Any]) -> None:
    """Value checks of a ``[measure]`` table."""
    MeasureConfig.coerce(spec).validate()


# What torch raises without an OOM type: its CPU allocator fails with a plain RuntimeError ("DefaultCPUAllocator:
# can't allocate memory: you tried to allocate N bytes", torch 2.15), and an asynchronous CUDA error with an
# AcceleratorError ("CUDA error: out of memory"). A dead worker leaves only its log's text ("MemoryError").
OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """An allocation failure: ``torch.OutOfMemoryError`` (CUDA and other accelerators), Python's
    ``MemoryError``, or a ``RuntimeError`` whose text is one of :data:`OOM_TEXTS` (the CPU allocator's)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_TEXTS)


def is_oom_message(text: str) -> bool:
    """Whether the error text of a process that died without a result is an allocation failure."""
    low = text.lower()
    return "memoryerror" in low or any(m in low for m in OOM_TEXTS)


def _check_device(device: torch.device) -> None:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"measure.device = {str(device)!r}, but torch sees no CUDA device here")


def _latency_kwargs(spec: MeasureConfig) -> dict[str, Any]:
    return {
        "warmup": spec.warmup,
        "repeats": spec.repeats or None,
        "min_repeats": spec.min_repeats,
        "max_repeats": spec.max_repeats,
        "time_cap_s": spec.time_cap_s,
        "target_ci": spec.target_ci,
    }


def measure_model(
    model: nn.Module,
    config: Any,
    measure_spec: MeasureConfig | Mapping[str, Any],
    device: str | torch.device = "cpu",
    *,
    artifact_dir: str | Path | None = None,
    artifacts: dict[str, str] | None = None,
) -> dict[str, float]:
    """Everything ``measure_spec`` asks for, as ``{metric: number}`` (names in :data:`METRIC_DOCS`).

    ``model`` is on ``device`` already (counting and the ERF run it in place; everything else on copies).
    ``config`` is the model's :class:`~attn_zoo.backbone.config.ModelConfig` (img_size, in_chans,
    num_classes, patch_size; the memory worker rebuilds the model from it). With ``erf`` on and an
    ``artifact_dir``, the ERF map is saved there as ``erf_untrained.npy`` and named in ``artifacts``.
    """
    spec = resolve_measure(measure_spec)
    device = torch.device(device)
    _check_device(device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    options = StepOptions(
        batch=spec.batch_size,
        img_size=config.img_size,
        in_chans=config.in_chans,
        num_classes=config.num_classes,
        dtype=spec.dtype,
        amp=spec.amp,
        channels_last=spec.channels_last,
        compile=spec.compile,
    )
    grid = stem_out_size(config.stem, (config.img_size, config.img_size), config.patch_size)
    metrics: dict[str, float] = {"tokens": float(grid[0] * grid[1])}

    if spec.count:
        counts = count_model(model, config.img_size, in_chans=config.in_chans, device=device, fvcore=spec.fvcore)
        metrics.update({k: v for k, v in counts.items() if isinstance(v, (int, float))})
        try:
            metrics["attention_macs_formula"] = float(analytic_attention_macs(model, config.img_size))
        except NotImplementedError as exc:  # a plugin without a formula: the counted number still stands
            warnings.warn(str(exc), RuntimeWarning, stacklevel=2)

    if any(getattr(spec, flag) for flag in (*_LATENCY_MODES, "memory", "efficiency")) or spec.max_batch_mem_mb > 0:
        # timing owns the machine: in a grid worker this waits until no other cell of the run computes here
        with machine.measuring() as held:
            metrics.update(_timed_figures(model, config, spec, options, device, metrics.get("flops")))
        metrics.update(held)
        metrics["machine_locked"] = 1.0 if machine.locked_worker() else 0.0

    if spec.erf:
        metrics.update(erf_metrics(model, config, spec, device, "erf", artifact_dir, artifacts))
    return metrics


def _timed_figures(
    model: nn.Module,
    config: Any,
    spec: MeasureConfig,
    options: StepOptions,
    device: torch.device,
    flops: float | None,
) -> dict[str, Any]:
    """Latency, throughput, memory and efficiency: the figures that need the machine to themselves."""
    metrics: dict[str, Any] = {}
    latencies: dict[str, dict[str, float]] = {}
    load = cpu_load()
    if load is not None and any(getattr(spec, flag) for flag in _LATENCY_MODES):
        metrics["cpu_load_1m"] = load  # other work on the machine shows here, and in the spread
    for flag, mode in _LATENCY_MODES.items():
        if getattr(spec, flag):
            latencies[mode] = time_mode(model, mode, options, device, spec)
            metrics.update({f"latency_{mode}_{k}": latencies[mode][k] for k in LATENCY_KEYS})
            if "times_ms" in latencies[mode]:  # every timed call: the store keeps them as samples
                metrics[f"latency_{mode}_times_ms"] = latencies[mode]["times_ms"]
            if "compile_s" in latencies[mode] and "compile_s" not in metrics:
                metrics["compile_s"] = latencies[mode]["compile_s"]
    if "fwd" in latencies:
        metrics["latency_median_ms"] = latencies["fwd"]["median_ms"]
        metrics["throughput_img_s"] = 1e3 * options.batch / latencies["fwd"]["median_ms"]
    if "train" in latencies:
        metrics["throughput_train_img_s"] = 1e3 * options.batch / latencies["train"]["median_ms"]

    if spec.memory:
        memory = measure_memory(
            model,
            ("fwd", "train"),
            options,
            device,
            method=spec.memory_method,
            config=config.to_dict(),
            threads=spec.threads,
        )
        metrics.update(memory)
        metrics["act_mem_fwd_mb"] = memory["peak_mem_fwd_mb"] - memory["weights_mb"]
    if spec.max_batch_mem_mb > 0:
        metrics.update(max_batch_throughput(model, options, device, spec))

    if spec.efficiency and ("fwd" in latencies or "train" in latencies) and flops is not None:
        # with autocast the matmuls run in bfloat16: compare with that peak
        peak = matmul_peak_gflops(device, "bfloat16" if spec.amp else spec.dtype)
        if "fwd" in latencies:
            metrics.update(efficiency(flops, options.batch, latencies["fwd"]["median_ms"], peak))
        if "train" in latencies:
            step_ms = latencies["train"]["median_ms"]
            metrics.update(train_step_efficiency(flops, options.batch, step_ms, peak))
            metrics["matmul_peak_gflops"] = peak

    return metrics


def measure_after_training(
    model: nn.Module,
    config: Any,
    measure_spec: MeasureConfig | Mapping[str, Any],
    device: str | torch.device = "cpu",
    *,
    images: torch.Tensor | Iterable[Any] | None = None,
    artifact_dir: str | Path | None = None,
    artifacts: dict[str, str] | None = None,
) -> dict[str, float]:
    """What is measured on the trained model: ``erf_trained_*`` when ``erf`` is on, else nothing.

    ``images``: a batch ``(N, C, H, W)``, or a loader of ``(images, labels)`` whose first batch is used (real
    images suit a trained model); ``None`` for noise.
    """
    spec = resolve_measure(measure_spec)
    if not spec.erf:
        return {}
    if images is not None and not isinstance(images, torch.Tensor):
        images = next(iter(images))[0]
    return erf_metrics(model, config, spec, torch.device(device), "erf_trained", artifact_dir, artifacts, images)


def erf_metrics(
    model: nn.Module,
    config: Any,
    spec: MeasureConfig,
    device: torch.device,
    prefix: str,
    artifact_dir: str | Path | None = None,
    artifacts: dict[str, str] | None = None,
    images: torch.Tensor | None = None,
) -> dict[str, float]:
    name = "erf_untrained" if prefix == "erf" else prefix
    path = Path(artifact_dir) / f"{name}.npy" if artifact_dir is not None else None
    if images is not None:
        images = images[: spec.erf_images]
    metrics, _ = measure_erf(
        model,
        images,
        img_size=config.img_size,
        n_images=spec.erf_images,
        in_chans=config.in_chans,
        device=device,
        save_to=path,
        prefix=prefix,
    )
    if path is not None and artifacts is not None:
        artifacts[name] = str(path)
    return metrics


def time_mode(
    model: nn.Module, mode: str, options: StepOptions, device: torch.device, spec: MeasureConfig
) -> dict[str, float]:
    """Latency of one mode on a prepared copy of ``model`` (see :mod:`attn_zoo.measure.steps`)."""
    import time

    prepared = prepare(model, options, device)
    step = make_step(prepared, mode, options, device)
    result: dict[str, float] = {}
    kwargs = _latency_kwargs(spec)
    if options.compile:
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result["compile_s"] = time.perf_counter() - start
    result.update(measure_latency(step, device=device, keep_times=True, **kwargs))
    return result


def max_batch_throughput(
    model: nn.Module, options: StepOptions, device: torch.device, spec: MeasureConfig, limit: int = 1 << 16
) -> dict[str, float]:
    """Double the batch from ``batch_size`` while the forward peak fits ``max_batch_mem_mb``; time the last fit.

    Peaks are measured in this process (CUDA allocator stats; on CPU the ``rss`` method). An out-of-memory
    error ends the search like a peak over the cap does.
    """
    import dataclasses

    cap = spec.max_batch_mem_mb
    best, best_peak, batch = 0, math.nan, options.batch
    while batch <= limit:
        trial = dataclasses.replace(options, batch=batch)
        try:
            peak = call_peak_mb(model, "fwd", trial, device, calls=1)
        except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(exc):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        if peak > cap:
            break
        best, best_peak, batch = batch, peak, batch * 2
    if not best:
        warnings.warn(f"batch {options.batch} already exceeds max_batch_mem_mb = {cap}", RuntimeWarning, stacklevel=2)
        return {"max_batch": 0.0}
    lat = time_mode(model, "fwd", dataclasses.replace(options, batch=best), device, spec)
    return {
        "max_batch": float(best),
        "throughput_max_batch_img_s": 1e3 * best / lat["median_ms"],
        "peak_mem_max_batch_mb": best_peak,
    }


__all__ = [
    "MEASURE_DEFAULTS",
    "METRIC_DOCS",
    "MODES",
    "MeasureConfig",
    "measure_after_training",
    "measure_model",
    "resolve_measure",
    "validate_measure",
    "weights_mb",
]
