"""``attn-zoo count PRESET``: parameters, MACs, FLOPs and attention MACs of one image."""

from __future__ import annotations

import argparse

from attn_zoo.backbone.config import MixerSpec
from attn_zoo.backbone.presets import create_model, get_preset
from attn_zoo.cli._args import number
from attn_zoo.cli._format import print_json
from attn_zoo.errors import ConfigError
from attn_zoo.measure.counting import count_model


def add_parser(sub) -> None:
    p = sub.add_parser("count", help="params, MACs, FLOPs and attention MACs of a preset at one resolution")
    p.add_argument("preset", help="preset name (see `attn-zoo list`)")
    p.add_argument("--img-size", type=int, default=None, help="input side (default: the preset's)")
    p.add_argument("--mechanism", default=None, help="swap the preset's mixer for this mechanism")
    p.add_argument("--num-classes", type=number(1, integer=True), default=None)
    p.add_argument("--backend", default=None, metavar="NAME", help="force one attention path (see `attn-zoo list`)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = get_preset(args.preset)
    if args.img_size is not None:
        if args.img_size < 8:
            raise ConfigError(f"--img-size must be at least 8, got {args.img_size}")
        config = config.replace(img_size=args.img_size)
    if args.mechanism:
        config = config.replace(mixer=MixerSpec(args.mechanism))
    if args.num_classes is not None:
        config = config.replace(num_classes=args.num_classes)
    if args.backend is not None:
        config = config.replace(backend=args.backend).validate()
        config.check_backend_runs("cpu")  # counting runs the model on the CPU
    model = create_model(config)
    counts = count_model(model, config.img_size, in_chans=config.in_chans)
    backends = model.attention_backends()
    result = {"preset": args.preset, "img_size": config.img_size, "backends": backends, **counts}
    if args.json:
        print_json(result)
    else:
        print(f"{args.preset} at {config.img_size}x{config.img_size}, one image:")
        print(f"  params          {counts['params'] / 1e6:10.3f} M")
        print(f"  MACs            {counts['macs'] / 1e9:10.3f} G   (multiply-accumulates; the papers' 'FLOPs')")
        print(f"  FLOPs           {counts['flops'] / 1e9:10.3f} G   (FlopCounterMode: 2 per MAC)")
        print(f"  attention MACs  {counts['attention_macs'] / 1e9:10.3f} G   (inside the token mixers)")
        print(f"  backends        {', '.join(backends) or '-'}")
    return 0
