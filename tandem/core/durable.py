"""Durable file writes: fsync a path, replace a file atomically. Used by every crash-safe store.

The pattern is always: write ``<name>.tmp``, flush and fsync it, ``os.replace`` it over the target
(atomic on POSIX), then fsync the directory so the new name itself survives a power loss. A write
that fails (a full disk) leaves the target as it was and removes the temp file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (a directory fsync makes created/renamed entries durable)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until all of ``data`` is written (the one low-level write of tandem's stores)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: never a half-written file, durable once this returns."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except OSError:  # a full disk: leave the old file as it was, and no half-written temp file
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_json_atomic(path: Path, data: dict) -> None:
    """``write_bytes_atomic`` of ``data`` as JSON."""
    write_bytes_atomic(path, json.dumps(data, indent=1).encode())
