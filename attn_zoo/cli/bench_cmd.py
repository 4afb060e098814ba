"""``attn-zoo bench TARGET ...``: latency, throughput, memory, MACs and efficiency of presets or mechanisms.

A TARGET is a preset (``swin_t``) or a mechanism (``swin``: the ``--preset`` harness, ``zoo_224`` by default,
with that mixer). Every (target, image size, batch) is one cell, written as a row into a results store
(``--store``, default ``results/bench.sqlite``) with its whole configuration and environment, so repeated
runs of the same cell can be compared (``attn-zoo results``, ``attn-zoo report``). Each invocation adds new
rows; it never overwrites earlier ones.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from attn_zoo.backbone.config import MixerSpec
from attn_zoo.backbone.presets import get_preset, list_presets
from attn_zoo.cli._args import number
from attn_zoo.cli._format import parse_knobs, print_json, table
from attn_zoo.errors import AttnZooError, ConfigError, UnknownNameError
from attn_zoo.measure.environment import environment
from attn_zoo.measure.memory import METHODS
from attn_zoo.measure.profile import is_oom, measure_model
from attn_zoo.measure.steps import DTYPES, MODES
from attn_zoo.registry import list_mechanisms
from attn_zoo.train.spec import CellSpec, build_cell_spec

_MODE_FLAGS = {"fwd": "latency", "fwdbwd": "forward_backward", "train": "train_step"}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency, throughput, memory and MACs of presets or mechanisms")
    p.add_argument("targets", nargs="+", metavar="TARGET", help="preset or mechanism names (see `attn-zoo list`)")
    p.add_argument("--preset", default="zoo_224", help="harness a mechanism TARGET runs in (default: zoo_224)")
    p.add_argument(
        "--img-size", type=number(8, integer=True), nargs="+", default=None, help="input sides (default: the preset's)"
    )
    p.add_argument("--batch", type=number(1, integer=True), nargs="+", default=[1], help="batch sizes (default: 1)")
    p.add_argument("--mode", nargs="+", choices=MODES, default=["fwd"], help="what to time (default: fwd)")
    p.add_argument("--knob", action="append", default=[], metavar="KEY=VALUE", help="mechanism knob (TOML value)")
    p.add_argument(
        "--num-classes", type=number(1, integer=True), default=None, help="head size (default: the preset's)"
    )
    g = p.add_argument_group("where and how")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    g.add_argument("--dtype", default="float32", choices=list(DTYPES))
    g.add_argument(
        "--backend",
        nargs="+",
        default=None,
        metavar="NAME",
        help="force attention paths, one cell each (auto or a name from `attn-zoo list`; default: auto)",
    )
    g.add_argument(
        "--threads", type=number(1, 4096, integer=True), default=None, help="torch threads (default: torch's choice)"
    )
    g.add_argument("--amp", action="store_true", help="autocast to bfloat16")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--channels-last", action="store_true", help="channels-last image and conv weights")
    g = p.add_argument_group("latency stopping rule")
    g.add_argument("--warmup", type=number(0, integer=True), default=3)
    g.add_argument(
        "--repeats", type=number(0, integer=True), default=0, help="exactly this many timed calls (default: adaptive)"
    )
    g.add_argument("--min-repeats", type=number(1, integer=True), default=5)
    g.add_argument("--max-repeats", type=number(1, integer=True), default=200)
    g.add_argument(
        "--time-cap",
        type=number(0, low_open=True, unit="seconds"),
        default=10.0,
        help="seconds of timed calls per mode (default: 10)",
    )
    g.add_argument(
        "--target-ci",
        type=number(0, 1, low_open=True),
        default=0.02,
        help="median's 95%% CI half-width (default: 0.02)",
    )
    g = p.add_argument_group("what else")
    g.add_argument("--no-count", action="store_true", help="skip MACs / FLOPs")
    g.add_argument("--fvcore", action="store_true", help="add fvcore's count as a cross-check column")
    g.add_argument("--no-memory", action="store_true", help="skip peak memory")
    g.add_argument("--memory-method", default="auto", choices=METHODS)
    g.add_argument("--max-batch-mem-mb", type=number(0), default=0.0, help="find the largest batch under this peak")
    g.add_argument("--no-efficiency", action="store_true", help="skip achieved GFLOP/s and the matmul peak")
    g.add_argument("--erf", action="store_true", help="effective receptive field radii (untrained model)")
    p.add_argument("--store", default="results/bench.sqlite", help="results store (default: results/bench.sqlite)")
    p.add_argument("--no-store", action="store_true", help="print only, write no rows")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run)


def build_cells(args: argparse.Namespace) -> list[CellSpec]:
    """Resolve every (target, img_size, batch) into a cell spec, checking everything before any compute."""
    mechanisms, presets = list_mechanisms(), list_presets()
    for target in args.targets:
        if target not in mechanisms and target not in presets:
            raise UnknownNameError("preset or mechanism", target, [*presets, *mechanisms])
    for flag, values in (("--img-size", args.img_size or []), ("--batch", args.batch)):
        bad = [v for v in values if v < (8 if flag == "--img-size" else 1)]
        if bad:
            raise ConfigError(f"{flag} {bad[0]} too small; allowed: >= {8 if flag == '--img-size' else 1}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: torch sees no CUDA device here; allowed: cpu")
    knobs = parse_knobs(args.knob)
    if knobs and not any(t in mechanisms for t in args.targets):
        raise ConfigError("--knob applies to mechanism targets; none given")
    run_id = uuid.uuid4().hex[:12]
    measure_base = {
        "device": args.device,
        "threads": args.threads or 0,  # 0: torch's choice
        "dtype": args.dtype,
        "amp": args.amp,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "count": not args.no_count,
        "fvcore": args.fvcore,
        "memory": not args.no_memory,
        "memory_method": args.memory_method,
        "max_batch_mem_mb": args.max_batch_mem_mb,
        "efficiency": not args.no_efficiency,
        "erf": args.erf,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "min_repeats": args.min_repeats,
        "max_repeats": args.max_repeats,
        "time_cap_s": args.time_cap,
        "target_ci": args.target_ci,
        **{flag: mode in args.mode for mode, flag in _MODE_FLAGS.items()},
    }
    cells = []
    for target in args.targets:
        is_mechanism = target in mechanisms
        preset = args.preset if is_mechanism else target
        config = get_preset(preset)
        if is_mechanism:
            config = config.replace(mixer=MixerSpec(target, knobs))
        if args.num_classes is not None:
            config = config.replace(num_classes=args.num_classes)
        forced = []
        for backend in args.backend or [None]:
            if backend is None:
                forced.append(config)
                continue
            forced.append(config.replace(backend=backend).validate())
            forced[-1].check_backend_runs(args.device)  # before any cell is timed or written
        for path_config in forced:
            for img_size in args.img_size or [config.img_size]:
                sized = path_config.replace(img_size=img_size).validate()
                for batch in args.batch:
                    cells.append(
                        build_cell_spec(
                            sized,
                            label=target,
                            knobs=knobs if is_mechanism else {},
                            preset=preset,
                            measure={**measure_base, "batch_size": batch},
                            bench_run=run_id,  # every invocation is new rows: repeated runs stay comparable
                        )
                    )
    return cells


def run(args: argparse.Namespace) -> int:
    import torch

    from attn_zoo.backbone.harness import Backbone
    from attn_zoo.grid.store import Store
    from attn_zoo.grid.suite import Cell

    cells = build_cells(args)
    if not args.no_store:  # the store's directory is the one place bench writes
        from attn_zoo.paths import allow_writes, make_dir

        allow_writes(Path(args.store).parent)
        make_dir(Path(args.store).parent)
    store = None if args.no_store else Store(args.store)
    command = "attn-zoo " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    ids = [Cell(c).cell_id for c in cells]
    run_id = None
    if store is not None:
        store.register_cells("bench", [Cell(c) for c in cells])
        run_id = store.start_run("bench", "", "", command, environment(args.device, args.dtype))
    rows, failed = [], 0
    try:
        for cell_id, cell in zip(ids, cells):
            if store is not None and not store.claim(cell_id, run_id, retry_failed=False):
                continue
            config, measure = cell.model, cell.measure
            print(f"bench {cell.label} at {config.img_size}, batch {measure.batch_size} ...", file=sys.stderr)
            start = time.perf_counter()
            status, reason, metrics, backends = "ok", None, {}, []
            try:
                torch.manual_seed(0)
                model = Backbone(config).to(args.device)
                metrics = measure_model(model, config, measure, torch.device(args.device))
                backends = model.attention_backends()
            except AttnZooError as exc:  # a user error (e.g. a backend this machine lacks): stop, say why
                if store is not None:
                    store.finish_cell(cell_id, "failed", {}, f"{type(exc).__name__}: {exc}")
                raise
            except Exception as exc:  # one cell's failure (e.g. out of memory) is recorded, the others run
                status, reason = ("oom" if is_oom(exc) else "failed"), f"{type(exc).__name__}: {exc}"
                failed += 1
                print(f"  {status}: {reason}\n{traceback.format_exc(limit=2)}", file=sys.stderr)
            metrics["cell_wall_s"] = time.perf_counter() - start
            env = environment(args.device, args.dtype)
            if store is not None:
                from attn_zoo.grid.provenance import cell_code

                store.finish_cell(cell_id, status, metrics, reason, env, backends, code=cell_code(cell))
            rows.append({"cell_id": cell_id, "label": cell.label, "status": status, "reason": reason,
                         "img_size": config.img_size, "batch": measure.batch_size, "backend": config.backend,
                         "backends": backends, "metrics": metrics, "environment": env})  # fmt: skip
    finally:
        if store is not None and run_id is not None:
            store.finish_run(run_id)
    if args.json:
        print_json(rows)
    else:
        print(render(rows))
        if store is not None:
            print(f"\n{len(rows)} rows -> {Path(args.store)}", file=sys.stderr)
    return 1 if failed else 0


def render(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the bench rows (the numbers with their spread)."""
    headers = ["target", "path", "img", "batch", "GMACs", "attn GMACs", "mode", "median ms", "IQR", "p95", "n", "CI"]
    headers += ["img/s"]
    headers += ["mem MiB", "GFLOP/s", "of peak"]
    lines = []
    for row in rows:
        m = row["metrics"]
        modes = [mode for mode in MODES if f"latency_{mode}_median_ms" in m] or ["-"]
        for mode in modes:
            lat = {k: m.get(f"latency_{mode}_{k}") for k in ("median_ms", "iqr_ms", "p95_ms", "repeats", "ci_rel")}
            mem = m.get("peak_mem_train_mb" if mode != "fwd" else "peak_mem_fwd_mb")
            thr = m.get("throughput_train_img_s" if mode == "train" else "throughput_img_s" if mode == "fwd" else None)
            conv = "" if m.get(f"latency_{mode}_converged", 1) else "*"
            lines.append(
                [
                    row["label"] if row["status"] == "ok" else f"{row['label']} ({row['status']})",
                    _path(row),
                    row["img_size"],
                    row["batch"],
                    _f(m.get("macs"), 1e-9, "{:.3f}"),
                    _f(m.get("attention_macs"), 1e-9, "{:.3f}"),
                    mode,
                    _f(lat["median_ms"], 1, "{:.2f}"),
                    _f(lat["iqr_ms"], 1, "{:.2f}"),
                    _f(lat["p95_ms"], 1, "{:.2f}"),
                    _f(lat["repeats"], 1, "{:.0f}"),
                    _f(lat["ci_rel"], 100, "±{:.1f}%") + conv,
                    _f(thr, 1, "{:.1f}"),
                    _f(mem, 1, "{:.1f}"),
                    _f(m.get({"fwd": "gflops_achieved", "train": "train_gflops_achieved"}.get(mode, "")), 1, "{:.1f}"),
                    _f(m.get({"fwd": "peak_fraction", "train": "train_peak_fraction"}.get(mode, "")), 100, "{:.1f}%"),
                ]
            )
    note = (
        "\n(* the median's CI did not reach the target before the time cap)" if any("*" in r[11] for r in lines) else ""
    )
    return table(headers, lines) + note


def _path(row: dict[str, Any]) -> str:
    """The path asked for and, when that was ``auto``, the paths it took: ``auto>sdpa``."""
    asked = row.get("backend") or "auto"
    ran = ",".join(row.get("backends") or [])
    return f"{asked}>{ran}" if asked == "auto" and ran else asked


def _f(value: Any, scale: float, fmt: str) -> str:
    return "-" if value is None else fmt.format(value * scale)
