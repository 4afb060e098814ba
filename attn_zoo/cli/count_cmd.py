"""``attn-zoo count PRESET``: parameters, MACs, FLOPs and attention MACs of one image, per stage too.

Attention MACs are shown twice: counted (``FlopCounterMode`` inside the mixers and stage contexts) and by the
mechanisms' declared formulas (``attention_macs(H, W)`` at each block's map), the number budgets use.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from attn_zoo.cli._args import number
from attn_zoo.cli._format import parse_knobs, print_json, table
from attn_zoo.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("count", help="params, MACs, FLOPs and attention MACs of a preset at one resolution")
    p.add_argument("preset", help="preset name (see `attn-zoo list`)")
    p.add_argument("--img-size", type=int, default=None, help="input side (default: the preset's)")
    p.add_argument("--mechanism", default=None, help="swap the preset's mixer for this mechanism")
    p.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a knob of the mechanism (TOML value, as in `run`/`bench`), e.g. --knob window=4; repeatable",
    )
    p.add_argument("--num-classes", type=number(1, integer=True), default=None)
    p.add_argument("--backend", default=None, metavar="NAME", help="force one attention path (see `attn-zoo list`)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def si(value: float, unit: str = "") -> str:
    """A count in M (below 1e9) or G with 3 significant digits: ``12.3 M``, ``0.0123 M``, ``1.50 G``."""
    scale, prefix = (1e9, "G") if abs(value) >= 1e9 else (1e6, "M")
    x = value / scale
    if x == 0:
        return f"0 {prefix}{unit}"
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f} {prefix}{unit}"


def _mechanism(config, args: argparse.Namespace):
    from attn_zoo.backbone.config import MixerSpec

    knobs = parse_knobs(args.knob)
    if args.mechanism:
        return config.replace(mixer=MixerSpec(args.mechanism, knobs))
    if knobs:
        specs = {spec.name: spec for stage in range(config.num_stages) for spec in config.stage_pattern(stage)}
        if len(specs) != 1:
            raise ConfigError(
                f"--knob: preset {config.name!r} mixes {', '.join(sorted(specs))}; name one with --mechanism"
            )
        (spec,) = specs.values()
        return config.replace(mixer=MixerSpec(spec.name, {**spec.knobs, **knobs}))
    return config


def breakdown(model, img_size: int, in_chans: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Totals and one row per top-level part (stem, each stage, head): map, MACs, attention MACs counted and
    by the formulas. One forward pass of one image on the CPU."""
    import torch

    from attn_zoo.measure.counting import _mixer_module_names, count_flops

    owned = _mixer_module_names(model)
    modules = dict(model.named_modules())
    maps: dict[str, tuple[int, int]] = {}
    hooks = [
        modules[name].register_forward_pre_hook(
            lambda mod, a, name=name: maps.__setitem__(name, tuple(a[0].shape[1:3]))
        )
        for name in owned
    ]
    for i, stage in enumerate(model.stages):
        hooks.append(
            stage.register_forward_hook(lambda mod, a, out, i=i: maps.__setitem__(f"stages.{i}", out.shape[1:3]))
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.randn(1, in_chans, img_size, img_size)
            total, counts, uncounted = count_flops(lambda: model(x))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    root = type(model).__name__

    def macs(name: str) -> int:
        return sum(counts.get(f"{root}.{name}", {}).values()) // 2

    def formula(names: list[str]) -> int | None:
        """The declared formulas summed; None when one is missing (a plugin without attention_macs)."""
        try:
            return sum(int(modules[n].attention_macs(*maps[n])) for n in names if n in maps)
        except (NotImplementedError, AttributeError):
            return None

    rows = []
    for part, _ in model.named_children():
        if part == "stages":
            for i in range(len(model.stages)):
                prefix = f"stages.{i}"
                mine = [n for n in owned if n.startswith(prefix + ".")]
                rows.append(
                    {
                        "part": f"stage {i}",
                        "map": list(maps.get(prefix, ())),
                        "macs": macs(prefix),
                        "attention_macs": sum(macs(n) for n in mine),
                        "attention_macs_formula": formula(mine),
                    }
                )
        elif macs(part):
            rows.append({"part": part, "map": [], "macs": macs(part), "attention_macs": 0, "attention_macs_formula": 0})
    totals = {
        "flops": total,
        "macs": total // 2,
        "attention_macs": sum(r["attention_macs"] for r in rows),
        "attention_macs_formula": formula(owned),
        "uncounted_ops": uncounted,
    }
    return totals, rows


def _off(formula: int | None, counted: int) -> str:
    return f"{(formula - counted) / counted:+.1%}" if counted and formula is not None else "-"


def _si(value: int | None) -> str:
    return "-" if value is None else si(value)


def run(args: argparse.Namespace) -> int:
    from attn_zoo.backbone.presets import create_model, get_preset
    from attn_zoo.measure.counting import count_params

    config = get_preset(args.preset)
    if args.img_size is not None:
        if args.img_size < 8:
            raise ConfigError(f"--img-size must be at least 8, got {args.img_size}")
        config = config.replace(img_size=args.img_size)
    config = _mechanism(config, args)
    if args.num_classes is not None:
        config = config.replace(num_classes=args.num_classes)
    if args.backend is not None:
        config = config.replace(backend=args.backend)
    config = config.validate()
    if args.backend is not None:
        config.check_backend_runs("cpu")  # counting runs the model on the CPU
    model = create_model(config)
    totals, rows = breakdown(model, config.img_size, config.in_chans)
    params = count_params(model)
    backends = model.attention_backends()
    mixers = sorted({spec.name for s in range(config.num_stages) for spec in config.stage_pattern(s)})
    knobs = {k: v for s in range(config.num_stages) for spec in config.stage_pattern(s) for k, v in spec.knobs.items()}
    result = {
        "preset": args.preset,
        "mechanisms": mixers,
        "knobs": {k: repr(v) if not isinstance(v, (bool, int, float, str)) else v for k, v in knobs.items()},
        "img_size": config.img_size,
        "backends": backends,
        "params": params,
        "attention_flops": 2 * totals["attention_macs"],
        **totals,
        "stages": rows,
    }
    if args.json:
        print_json(result)
        return 0
    shown = ", ".join(f"{k}={v!r}" for k, v in knobs.items()) or "defaults"
    print(f"{args.preset} with {', '.join(mixers)} (knobs: {shown}) at {config.img_size}x{config.img_size}, one image:")
    print(f"  params          {si(params)}")
    print(f"  MACs            {si(totals['macs'])}   (multiply-accumulates; the papers' 'FLOPs')")
    print(f"  FLOPs           {si(totals['flops'])}   (FlopCounterMode: 2 per MAC)")
    counted, declared = totals["attention_macs"], totals["attention_macs_formula"]
    print(
        f"  attention MACs  {si(counted)} counted, {_si(declared)} by the formulas ({_off(declared, counted)})"
        "   (inside the token mixers and stage contexts)"
    )
    print(f"  backends        {', '.join(backends) or '-'}\n")
    headers = ["part", "map", "MACs", "attention MACs", "by formula", "formula vs counted"]
    body = [
        [
            r["part"],
            "x".join(map(str, r["map"])) or "-",
            si(r["macs"]),
            si(r["attention_macs"]) if r["part"].startswith("stage") else "-",
            _si(r["attention_macs_formula"]) if r["part"].startswith("stage") else "-",
            _off(r["attention_macs_formula"], r["attention_macs"]) if r["part"].startswith("stage") else "-",
        ]
        for r in rows
    ]
    print(table(headers, body))
    return 0
