"""Which ``attn-zoo bench`` calls cover every paper preset and every built-in mechanism in ``zoo_224`` on each
attention path that runs on a device: one line per call, ``PATHS<TAB>TARGETS`` (space-separated), targets
that offer the same usable paths grouped into one call. Calls without ``flex`` come first, then the ``flex``
calls (compiling flex_attention for every stage shape is the slow part, so a time box cuts those first).

    python scripts/gpu_bench_plan.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attn_zoo.backbone.config import MixerSpec  # noqa: E402
from attn_zoo.backbone.presets import get_preset, list_presets  # noqa: E402
from attn_zoo.errors import AttnZooError  # noqa: E402
from attn_zoo.registry import list_mechanisms  # noqa: E402

SLOW_LAST = ("flex",)


def usable_paths(target: str, device: str) -> tuple[str, ...]:
    """The forced paths ``attn-zoo bench TARGET --device DEVICE --backend NAME`` accepts, after ``auto``."""
    if target in list_presets():
        config = get_preset(target)
    else:
        config = get_preset("zoo_224").replace(mixer=MixerSpec(target, {}))
    usable = ["auto"]
    for name in config.allowed_backends()[1:]:
        try:
            forced = config.replace(backend=name).validate()
            forced.check_backend_runs(device)
        except AttnZooError:  # not on this device, or not with these knobs (natten: border)
            continue
        usable.append(name)
    return tuple(usable)


def plan(device: str, targets: list[str]) -> list[tuple[list[str], list[str]]]:
    groups: dict[tuple[str, ...], list[str]] = {}
    for target in targets:
        groups.setdefault(usable_paths(target, device), []).append(target)
    calls = [([p for p in paths if p not in SLOW_LAST], group) for paths, group in groups.items()]
    calls += [([p], group) for paths, group in groups.items() for p in paths if p in SLOW_LAST]
    return calls


def default_targets() -> list[str]:
    presets = [p for p in list_presets() if not p.startswith("zoo_")]
    mechanisms = [n for n, spec in list_mechanisms().items() if spec.source == "built-in"]
    return presets + mechanisms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("targets", nargs="*", help="default: every paper preset and every built-in mechanism")
    args = p.parse_args(argv)
    for paths, group in plan(args.device, args.targets or default_targets()):
        print(" ".join(paths) + "\t" + " ".join(group))
    return 0


if __name__ == "__main__":
    sys.exit(main())
