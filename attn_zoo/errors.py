"""Errors a user can cause, each with one message that names what is wrong and what is allowed.

The CLI prints these without a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class AttnZooError(Exception):
    """Base class for user-facing errors (bad name, bad knob, bad suite file, bad tensor)."""


class UnknownNameError(AttnZooError, KeyError):
    """A mechanism, preset, knob or backend name that does not exist."""

    def __init__(self, what: str, name: object, allowed: Iterable[str]):
        self.what, self.name, self.allowed = what, name, sorted(allowed)
        super().__init__(f"unknown {what} {name!r}; allowed: {', '.join(self.allowed) or '(none)'}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class KnobError(AttnZooError, ValueError):
    """A knob value of the wrong type or outside what the mechanism allows."""


class ConfigError(AttnZooError, ValueError):
    """A model, suite or command-line configuration that cannot be built."""


class MechanismInputError(AttnZooError, ValueError):
    """A tensor a mechanism cannot take (wrong rank, channels, too small), naming the constraint."""


class BackendUnavailableError(AttnZooError, RuntimeError):
    """A forced backend that cannot run on this machine; the message says why."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C (cells handed back, temporary files removed), exit status 143."""
