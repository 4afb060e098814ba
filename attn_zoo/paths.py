"""Where attn_zoo may write, and writing there safely: the one check every written path passes.

A command that writes names its roots first (:func:`allow_writes`: the results directory, the cache directory,
a report's ``--out``); the roots travel to worker processes in ``$ATTN_ZOO_WRITE_ROOTS``. :func:`writable`
refuses any path that resolves outside them, in one line. With no roots named (a library call outside a
command) every path is allowed: the caller chose it.

Files are written atomically (:func:`atomic_output`: a temporary file in the same directory, then
``os.replace``), so a full disk or a crash never leaves a truncated figure, page, CSV or JSON file; every
``OSError`` on output becomes one :class:`OutputError` naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from attn_zoo.errors import AttnZooError

WRITE_ROOTS_ENV = "ATTN_ZOO_WRITE_ROOTS"
CACHE_ENV = "ATTN_ZOO_CACHE"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class OutputError(AttnZooError, OSError):
    """A path attn_zoo may not or cannot write: outside the allowed roots, an existing file where a directory
    goes, a full disk, no permission."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``explicit`` (``--cache-dir``), else ``$ATTN_ZOO_CACHE``, else the platform's user
    cache directory (platformdirs when installed, else ``$XDG_CACHE_HOME/attn_zoo`` or ``~/.cache/attn_zoo``)."""
    chosen = explicit or os.environ.get(CACHE_ENV)
    if chosen:
        return Path(os.path.expanduser(str(chosen))).absolute()
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base, "attn_zoo").absolute()
    return Path(platformdirs.user_cache_dir("attn_zoo", appauthor=False)).absolute()


def write_roots() -> list[Path]:
    """The directories this process may write under (empty: no command set any)."""
    text = os.environ.get(WRITE_ROOTS_ENV, "")
    return [Path(p) for p in text.split(os.pathsep) if p]


def allow_writes(*roots: str | os.PathLike[str]) -> list[Path]:
    """Add ``roots`` to the directories this process and its workers may write under; returns them resolved.
    Commands call this once, before writing; :func:`restore_roots` undoes it (the CLI does, after a command)."""
    resolved = [Path(r).expanduser().resolve() for r in roots]
    current = write_roots()
    os.environ[WRITE_ROOTS_ENV] = os.pathsep.join(str(p) for p in dict.fromkeys([*current, *resolved]))
    return resolved


@contextlib.contextmanager
def restore_roots() -> Iterator[None]:
    """Whatever a command allows is forgotten when it ends (the CLI's main wraps every command in this)."""
    before = os.environ.get(WRITE_ROOTS_ENV)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(WRITE_ROOTS_ENV, None)
        else:
            os.environ[WRITE_ROOTS_ENV] = before


def writable(path: str | os.PathLike[str]) -> Path:
    """THE check: ``path`` resolved (``~`` expanded, symlinks followed, ``..`` collapsed) must lie under one of
    :func:`write_roots`; returns it resolved, else raises :class:`OutputError` in one line."""
    try:
        full = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc}") from None
    roots = write_roots()
    if roots and not any(full.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise OutputError(
            f"refusing to write {str(path)!r} ({full}): outside the directories this command writes ({allowed})"
        )
    return full


def make_dir(path: str | os.PathLike[str]) -> Path:
    """Create the directory ``path`` (and its parents) after :func:`writable`; one line when it cannot be."""
    full = writable(path)
    if full.exists() and not full.is_dir():
        raise OutputError(f"cannot write into {str(path)!r}: it is an existing file, not a directory")
    try:
        full.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the directory {str(path)!r}: {_reason(exc)}") from None
    return full


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error it becomes ``path``
    (``os.replace``), else it is removed. Any ``OSError`` is one :class:`OutputError` naming ``path``."""
    full = writable(path)
    make_dir(full.parent)
    if full.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: it is an existing directory")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=full.parent, prefix=f".{full.name}.", suffix=f".tmp{full.suffix}")
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {_reason(exc)}") from None
    tmp = Path(tmp_name)
    with contextlib.suppress(OSError):  # mkstemp makes 0600; the file gets the permissions of a plain open()
        os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        os.replace(tmp, full)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot write {str(path)!r}: {_reason(exc)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """``path`` holds ``text`` (UTF-8), written atomically after the check."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
