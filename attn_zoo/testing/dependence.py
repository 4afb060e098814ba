"""The ``dependence`` check: the output depends on every input position, every input channel and (where the
block reads one) the stage context, at several map sizes, odd ones included.

It probes the Jacobian of the mixer alone (the context is computed once and held fixed, so a context that
pools the whole map cannot hide a mixer that ignores part of it):

- backward from a random projection of the output gives ``d<r, out>/dx``; an input position (summed over
  batch and channels) or an input channel (summed over batch and positions) whose gradient is exactly zero
  does not affect the output; the same backward gives the context's gradient;
- a forward pass on a second random input: an output position or channel that does not change with the
  input ignores it (a zeroed or constant part of the output).

A mechanism that ignores something by design declares it in ``ignores`` (``{"channels": "why"}``); the check
skips that part and says what it exempted.
"""

from __future__ import annotations

import torch

from attn_zoo.errors import AttnZooError
from attn_zoo.testing.kit import Failure, Subject, _eval, _jitter

DEPENDENCE_SIZES = ((8, 8), (7, 9), (13, 11), (16, 16))  # odd sides catch off-by-one crops and halves
PARTS = ("positions", "channels", "context")

FIX_IGNORED = (
    "every token and channel of x must reach the output: look for a slice or crop that drops the last row or "
    "column (x[:, :H-1], range(W - 1)), a mask or padding applied to real tokens, or channels split and only "
    "part used; if the design really ignores it, declare it: ignores = {{'{part}': 'why'}} on the class"
)


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    out: list[str] = []
    start = prev = None
    for i in [*indices, None]:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ", ".join(out)


def _half(indices: list[int], n: int, unit: str, first: str, second: str) -> str:
    """Names a run of indices that is one half (or the last one) of ``n``: ``" (the bottom half)"``, ..."""
    if n > 1 and indices == [n - 1]:
        return f" (the last {unit})"
    for lo in {n // 2, (n + 1) // 2}:
        if n > 1 and indices == list(range(lo, n)):
            return f" ({second})"
        if n > 1 and indices == list(range(0, n - lo)):
            return f" ({first})"
    return ""


def describe_positions(ignored: torch.Tensor) -> str:
    """Says which positions of an ``(H, W)`` boolean map are ignored: whole rows, whole columns, or examples."""
    H, W = ignored.shape
    rows = [int(r) for r in torch.nonzero(ignored.all(1)).flatten()]
    cols = [int(c) for c in torch.nonzero(ignored.all(0)).flatten()]
    covered = torch.zeros_like(ignored)
    covered[rows, :] = True
    covered[:, cols] = True
    parts = []
    if rows:
        half = _half(rows, H, "row", "the top half", "the bottom half")
        parts.append(f"row{'s' if len(rows) > 1 else ''} {_ranges(rows)}{half}")
    if cols:
        half = _half(cols, W, "column", "the left half", "the right half")
        parts.append(f"column{'s' if len(cols) > 1 else ''} {_ranges(cols)}{half}")
    rest = ignored & ~covered
    if rest.any():
        where = [f"({int(r)}, {int(c)})" for r, c in torch.nonzero(rest)[:4]]
        more = " ..." if int(rest.sum()) > 4 else ""
        parts.append(f"{int(rest.sum())} other position(s) (row, column) {', '.join(where)}{more}")
    return f"{int(ignored.sum())} of {H * W} positions: {'; '.join(parts)}"


def describe_channels(ignored: torch.Tensor) -> str:
    C = ignored.numel()
    chans = [int(c) for c in torch.nonzero(ignored).flatten()]
    half = _half(chans, C, "channel", "the first half", "the second half")
    return f"{len(chans)} of {C} channels: {_ranges(chans)}{half}"


def declared(mixer: object) -> dict[str, str]:
    """What ``mixer`` declares it ignores (class attribute, or set in ``__init__`` when it depends on knobs)."""
    exempt = dict(getattr(mixer, "ignores", None) or {})
    unknown = sorted(set(exempt) - set(PARTS))
    if unknown:
        raise Failure(
            f"ignores declares {unknown[0]!r}, which the kit does not know",
            f"declare only {', '.join(PARTS)} in ignores",
        )
    return exempt


def _probe(s: Subject, size: tuple[int, int], occ: int, exempted: dict[str, str]) -> tuple[bool, bool]:
    """Runs the probes at one map size: (ran, read a context); not ran when the mechanism refuses the size."""
    try:
        mixer, ctx = s.build(size, occ)
    except AttnZooError:
        return False, False
    exempt = declared(mixer)
    exempted.update(exempt)
    _jitter(mixer, ctx)
    _eval(mixer, ctx)
    x = s.inputs(size)
    with torch.no_grad():
        context = ctx(x) if ctx is not None else None
    reads_context = isinstance(context, torch.Tensor) and context.is_floating_point()
    if reads_context:
        context = context.detach().requires_grad_(True)
    x.requires_grad_(True)
    try:
        out = mixer(x, context)
    except AttnZooError:
        return False, False
    at = f" at {size[0]}x{size[1]}{s.label(occ)}"
    g = torch.Generator().manual_seed(4)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    grad = x.grad.abs() if x.grad is not None else torch.zeros_like(x)
    if "positions" not in exempt:
        ignored = grad.sum(dim=(0, 3)) == 0
        if ignored.any():
            raise Failure(
                f"the output does not depend on input {describe_positions(ignored)}{at}",
                FIX_IGNORED.format(part="positions"),
            )
    if "channels" not in exempt:
        ignored = grad.sum(dim=(0, 1, 2)) == 0
        if ignored.any():
            raise Failure(
                f"the output does not depend on input {describe_channels(ignored)}{at}",
                FIX_IGNORED.format(part="channels"),
            )
    if reads_context and "context" not in exempt and (context.grad is None or not context.grad.any()):
        raise Failure(
            f"the output does not depend on the stage context{at}",
            "read `context` in forward (or return None from build_context / uses_context for blocks that do "
            "not need it); if the design really ignores it, declare ignores = {'context': 'why'}",
        )
    _output_changes(s, mixer, context, x.detach(), out.detach(), at, exempt)
    return True, reads_context


def _output_changes(s, mixer, context, x, out, at: str, exempt: dict[str, str]) -> None:
    """Every output position and channel changes when the input does (nothing zeroed or held constant)."""
    other = s.inputs(tuple(x.shape[1:3]), seed=7)
    with torch.no_grad():
        out2 = mixer(other, context.detach() if isinstance(context, torch.Tensor) else context)
    same = out2 == out
    if "positions" not in exempt:
        constant = same.all(dim=3).all(dim=0)
        if constant.any():
            raise Failure(
                f"output {describe_positions(constant)} stay the same for another input{at}: they ignore the input",
                FIX_IGNORED.format(part="positions"),
            )
    if "channels" not in exempt:
        constant = same.all(dim=(0, 1, 2))
        if constant.any():
            raise Failure(
                f"output {describe_channels(constant)} stay the same for another input{at}: they ignore the input",
                FIX_IGNORED.format(part="channels"),
            )


def _join(items: list[str]) -> str:
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 2 else items)


def check_dependence(s: Subject) -> str:
    """Every input position and channel (and the context, where read) affects the output, at several sizes."""
    exempt: dict[str, str] = {}
    ran, context = [], False
    for size in DEPENDENCE_SIZES:
        done = [_probe(s, size, occ, exempt) for occ in s.occurrences]
        if any(r for r, _ in done):
            ran.append(f"{size[0]}x{size[1]}")
        context = context or any(c for _, c in done)
    if not ran:
        raise Failure("refused every probed map size", "run at 8x8 at least")
    checked = [p.removesuffix("s") for p in PARTS[:2] if p not in exempt]
    if context and "context" not in exempt:
        checked.append("the stage context")
    text = f"output depends on every input {_join(checked) or '(all exempted)'} at {', '.join(ran)}"
    if exempt:
        text += "; exempted (declared in ignores): " + "; ".join(f"{k}: {v}" for k, v in exempt.items())
    return text
