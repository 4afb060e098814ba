"""``attn-zoo list``: mechanisms (knobs, defaults, attention paths available here) and presets."""

from __future__ import annotations

import argparse

from attn_zoo.cli._format import print_json


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="mechanisms with their knobs and backends, and presets")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--device",
        default=None,
        help="device to check attention paths against (default: this machine's best)",
    )
    p.set_defaults(func=run)


def collect(device: str) -> dict:
    from attn_zoo.backbone.presets import list_presets
    from attn_zoo.layers.backends import availability
    from attn_zoo.registry import list_mechanisms, plugin_errors

    mechanisms = {}
    for name, spec in list_mechanisms().items():
        mechanisms[name] = {
            "summary": spec.summary,
            "paper": spec.paper,
            "source": spec.source,
            "knobs": {k: {"type": ks.type_name, "default": ks.default, "doc": ks.doc} for k, ks in spec.knobs.items()},
            "stage_defaults": {k: list(v) for k, v in spec.cls.stage_defaults.items()},
            "block_pattern": [dict(p) for p in spec.cls.block_pattern],
            "backends": {b: (reason or "available") for b, reason in availability(spec.backends, device).items()},
            "auto": _auto(spec.cls.auto_candidates(device), device, spec.cls.op),
        }
    return {
        "device": device,
        "mechanisms": mechanisms,
        "presets": list_presets(),
        "plugin_errors": plugin_errors(),
    }


def _auto(order: tuple[str, ...], device: str, op: str) -> str | None:
    """The first usable path of the device's default ``auto`` order (a call's own shapes may pick another)."""
    from attn_zoo.layers.backends import unavailable_reason

    return next((b for b in order if unavailable_reason(b, device, op) is None), None)


def run(args: argparse.Namespace) -> int:
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    info = collect(device)
    if args.json:
        print_json(info)
        return 0
    print(f"Mechanisms ({len(info['mechanisms'])}), attention paths checked on {info['device']}:\n")
    for name, m in info["mechanisms"].items():
        print(f"{name}  [{m['source']}]  {m['summary']}")
        if m["paper"]:
            print(f"    paper: {m['paper']}")
        for knob, k in m["knobs"].items():
            print(f"    {knob} = {k['default']!r}  ({k['type']})  {k['doc']}")
        for key, values in m["stage_defaults"].items():
            print(f"    per-stage default {key} = {values}")
        if len(m["block_pattern"]) > 1:
            print(f"    block pattern: {m['block_pattern']}")
        backends = ", ".join(b if r == "available" else f"{b} (no: {r})" for b, r in m["backends"].items())
        print(f"    backends: {backends}")
        print(f"    auto picks (default order; by shape per call): {m['auto'] or 'none'}\n")
    print("Presets:")
    for name, doc in info["presets"].items():
        print(f"    {name}: {doc}")
    return 0
