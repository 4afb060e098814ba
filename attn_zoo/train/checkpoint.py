"""Checkpoints that are safe to load: a one-line header with the payload's length and sha256, then the payload.

The payload is ``torch.save`` of plain data (tensors, numbers, strings, lists, dicts): model, optimizer
and scheduler state, the run's configuration, the step and the random generators' states. Loading checks
the header, the length (a truncated file says so) and the sha256 (a changed byte says so) before anything
is unpickled, then unpickles with ``torch.load(weights_only=True)``, which refuses anything but plain data
(no code runs on load). Every failure is one :class:`CheckpointError` naming the file and what is wrong.
Files are written to a temporary name and renamed, so a crash mid-write never leaves a half file behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from attn_zoo.errors import AttnZooError

MAGIC = b"attn_zoo-checkpoint"
VERSION = 1
_HEADER_MAX = 256


class CheckpointError(AttnZooError, ValueError):
    """A checkpoint that is missing, truncated, changed, or not plain data."""


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` (plain data only) to ``path`` atomically; returns the path."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    payload = buffer.getvalue()
    header = b"%s v%d bytes=%d sha256=%s\n" % (
        MAGIC,
        VERSION,
        len(payload),
        hashlib.sha256(payload).hexdigest().encode(),
    )
    from attn_zoo.paths import make_dir, writable

    path = writable(path)  # the one check every written path passes
    make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`; raises :class:`CheckpointError`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read ({exc.strerror or exc})") from None
    newline = raw.find(b"\n", 0, _HEADER_MAX)
    fields = raw[:newline].split(b" ") if newline > 0 else []
    if (
        len(fields) != 4
        or fields[0] != MAGIC
        or not fields[2].startswith(b"bytes=")
        or not fields[3].startswith(b"sha256=")
    ):
        raise CheckpointError(f"checkpoint {path}: not an attn_zoo checkpoint (no valid header line)")
    if fields[1] != b"v%d" % VERSION:
        raise CheckpointError(f"checkpoint {path}: format {fields[1].decode(errors='replace')} unknown; this reads v1")
    try:
        expected_len = int(fields[2][len(b"bytes=") :])
    except ValueError:
        raise CheckpointError(f"checkpoint {path}: header has a bad length field") from None
    expected_sha = fields[3][len(b"sha256=") :].decode(errors="replace")
    payload = raw[newline + 1 :]
    if len(payload) < expected_len:
        raise CheckpointError(
            f"checkpoint {path}: truncated ({len(payload)} of {expected_len} payload bytes); it cannot be used"
        )
    if len(payload) > expected_len:
        raise CheckpointError(f"checkpoint {path}: {len(payload) - expected_len} bytes more than its header says")
    actual_sha = hashlib.sha256(payload).hexdigest()
    if actual_sha != expected_sha:
        raise CheckpointError(
            f"checkpoint {path}: content does not match its sha256 (changed or corrupted after it was written)"
        )
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path}: holds more than plain data, refused by weights_only=True ({exc})"
        ) from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: payload unreadable ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: payload is a {type(state).__name__}, expected a dict")
    return state
