"""The kit's machinery: the mechanism under test, check results, the report, and the runner.

The checks themselves are in :mod:`attn_zoo.testing.checks`; each is a function ``check(subject) -> str``
that returns what it verified, or raises :class:`Failure` saying what is wrong and what to fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attn_zoo.errors import ConfigError, KnobError, UnknownNameError
from attn_zoo.mechanisms.base import Mixer
from attn_zoo.names import Registry
from attn_zoo.registry import create_mechanism, get_mechanism, isolated_registry, list_mechanisms, register_mechanism

BASE_SIZE = (8, 8)  # the stage map of the plain checks: small, and no multiple of Swin's default window 7


class Failure(Exception):
    """A check found a problem: ``problem`` says what is wrong, ``fix`` what to change."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


class Skip(Exception):
    """A check that does not apply here (the reason is shown)."""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check's outcome: ``status`` is ``pass``, ``fail`` or ``skip``; ``detail`` what was verified or found."""

    check: str
    status: str
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def __str__(self) -> str:
        text = f"{self.status.upper():4}  {self.check:11} {self.detail}"
        if self.fix:
            text += f"\n{'':18}fix: {self.fix}"
        return text


@dataclasses.dataclass(frozen=True)
class Report:
    """Every check's result for one mechanism; ``ok`` when none failed. ``str(report)`` is the readable form."""

    mechanism: str
    knobs: Mapping[str, Any]
    dim: int
    num_heads: int
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "fail")

    @property
    def failed(self) -> list[str]:
        """Names of the failed checks."""
        return [r.check for r in self.failures]

    def __getitem__(self, check: str) -> CheckResult:
        for result in self.results:
            if result.check == check:
                return result
        raise KeyError(check)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "knobs": {
                k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v) for k, v in self.knobs.items()
            },
            "dim": self.dim,
            "num_heads": self.num_heads,
            "ok": self.ok,
            "results": [dataclasses.asdict(r) for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self.knobs.items()) or "defaults"
        head = f"conformance of {self.mechanism!r} (dim {self.dim}, {self.num_heads} heads, knobs: {knobs})"
        counts = {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "skip")}
        tail = f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
        return "\n".join([head, *(str(r) for r in self.results), tail])


@dataclasses.dataclass
class Subject:
    """The mechanism under test: builds instances (with the per-stage context, as the harness does) and runs them."""

    name: str
    knobs: dict[str, Any]
    dim: int
    num_heads: int

    @property
    def cls(self) -> type[Mixer]:
        return get_mechanism(self.name).cls

    @property
    def occurrences(self) -> range:
        """Block positions of the mechanism's ``block_pattern`` (Swin: 0 = W-MSA, 1 = SW-MSA)."""
        return range(len(self.cls.block_pattern))

    def build(
        self, size: tuple[int, int] = BASE_SIZE, occurrence: int = 0, seed: int = 0
    ) -> tuple[Mixer, nn.Module | None]:
        """A mixer for a ``size`` stage map and, if its block reads one, the stage context module."""
        torch.manual_seed(seed)
        mixer = create_mechanism(
            self.name, self.dim, self.num_heads, feat_size=size, occurrence=occurrence, **self.knobs
        )
        context = None
        if getattr(mixer, "uses_context", True):
            resolved = get_mechanism(self.name).resolve_knobs(self.knobs, occurrence=occurrence)
            context = type(mixer).build_context(self.dim, self.num_heads, size, resolved)
        return mixer, context

    def label(self, occurrence: int) -> str:
        if len(self.occurrences) == 1:
            return ""
        pattern = dict(self.cls.block_pattern[occurrence])
        return f" (block {occurrence} of the pattern, {pattern})"

    def inputs(self, size: tuple[int, int] = BASE_SIZE, batch: int = 2, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, *size, self.dim, generator=g)


def run(mixer: Mixer, context: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """One forward pass as the harness makes it: the context once on the stage input, then the mixer."""
    return mixer(x, context(x) if context is not None else None)


def where(exc: BaseException) -> str:
    """The innermost line of the traceback outside torch, where a plugin author would look first."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename.replace("\\", "/")]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {Path(frame.filename).name}:{frame.lineno}: {(frame.line or '').strip()})"


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}{where(exc)}"


# -- helpers the checks share (checks.py, dependence.py) ----------------------------------------------
def _jitter(*modules: nn.Module | None, scale: float = 0.05) -> None:
    """Move every parameter off its initial value (zero-initialised ones too), so checks see real values."""
    with torch.no_grad():
        for module in modules:
            for p in module.parameters() if module is not None else ():
                if p.is_floating_point():
                    p.add_(scale * torch.randn_like(p))


def _eval(*modules: nn.Module | None) -> None:
    for module in modules:
        if module is not None:
            module.eval()


# -- running --------------------------------------------------------------------------------------------
CheckFn = Callable[[Subject], str]
_CHECKS: Registry[tuple[CheckFn, str]] = Registry("conformance check")  # in the order the checks run


def check(name: str, fix: str) -> Callable[[CheckFn], CheckFn]:
    """Register a check under ``name``; ``fix`` is the advice shown when it raises something unexpected."""

    def wrap(fn: CheckFn) -> CheckFn:
        _CHECKS[name] = (fn, fix)
        return fn

    return wrap


def run_check(subject: Subject, name: str) -> CheckResult:
    fn, generic_fix = _CHECKS[name]
    try:
        with torch.random.fork_rng(devices=[]):
            detail = fn(subject)
    except Failure as failure:
        return CheckResult(name, "fail", failure.problem, failure.fix)
    except Skip as skip:
        return CheckResult(name, "skip", str(skip))
    except Exception as exc:  # anything else a plugin raises is a failure of this check, reported with its line
        return CheckResult(name, "fail", f"raised {describe(exc)}", generic_fix)
    return CheckResult(name, "pass", detail)


@contextlib.contextmanager
def subject_for(target: str | type[Mixer]) -> Iterator[str]:
    """The registered name of ``target``; a class not registered is registered for the duration only."""
    if isinstance(target, str):
        get_mechanism(target)  # unknown names fail here, listing what exists
        yield target
        return
    if not (isinstance(target, type) and issubclass(target, Mixer)):
        raise TypeError(f"check a mechanism name or a Mixer subclass, got {target!r}")
    registered = target.__dict__.get("name")
    if registered and registered in list_mechanisms() and list_mechanisms()[registered].cls is target:
        yield registered
        return
    with isolated_registry():
        name = "kit_" + (registered or target.__name__.lower())
        try:
            register_mechanism(name, source="attn_zoo.testing")(target)
            yield name
        finally:
            if registered is None:
                with contextlib.suppress(AttributeError):
                    delattr(target, "name")
            else:
                target.name = registered


def check_mechanism(
    target: str | type[Mixer],
    *,
    checks: Sequence[str] | None = None,
    dim: int = 24,
    num_heads: int = 3,
    **knobs: Any,
) -> Report:
    """Run the conformance checks on mechanism ``target`` (a registered name or a Mixer subclass).

    ``knobs`` are passed to the mechanism as in a suite file; ``dim`` / ``num_heads`` size the standalone
    checks (the harness check uses a tiny ``zoo_s32``: dims 24-48-96-192, heads 3-6-12-24, 32x32 input).
    ``checks`` picks a subset of :data:`CHECKS`. Never raises for what the mechanism does; see the report.
    """
    if dim < 1 or num_heads < 1 or dim % num_heads:
        raise ConfigError(f"attn_zoo.testing: channels ({dim}) must be divisible by num_heads ({num_heads}), both > 0")
    selected = list(checks) if checks is not None else list(_CHECKS)
    unknown = [c for c in selected if c not in _CHECKS]
    if unknown:
        raise UnknownNameError("conformance check", unknown[0], _CHECKS)
    threads = torch.get_num_threads()
    # one thread: the tensors are tiny (threads only add overhead, a lot on a busy machine)
    torch.set_num_threads(1)
    try:
        with subject_for(target) as name:
            subject = Subject(name, dict(knobs), dim, num_heads)
            get_mechanism(name).validate(knobs)  # a bad knob is the caller's error, raised before any check
            try:  # so is a width or head count the mechanism refuses (MSDA: heads a multiple of the dilations)
                subject.build()
            except KnobError as exc:
                raise KnobError(f"attn_zoo.testing: dim {dim} with {num_heads} heads: {exc}") from None
            results = tuple(run_check(subject, c) for c in selected)
    finally:
        torch.set_num_threads(threads)
    shown = name.removeprefix("kit_") if not isinstance(target, str) else name
    return Report(shown, dict(knobs), dim, num_heads, results)


def check_names() -> tuple[str, ...]:
    return tuple(_CHECKS)
