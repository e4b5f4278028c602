"""Durable file writes: fsync a path, replace a file atomically. Used by every crash-safe store.

The pattern is always: write ``<name>.tmp``, flush and fsync it, ``os.replace`` it over the target
(atomic on POSIX), then fsync the directory so the new name itself survives a power loss. A write
that fails (a full disk) leaves the target as it was and removes the temp file.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
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


class DirectoryBusy(Exception):
    """Another process holds a directory's lock (:func:`lock_directory`).

    Attributes:
        directory: the locked directory. holder: the pid the holder wrote into the lock file ("?" unknown).
    """

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(f"{directory} is in use by another process (pid {holder})")
        self.directory, self.holder = directory, holder


def lock_directory(directory: Path, name: str = "LOCK", wait_s: float = 0.0) -> int:
    """Create ``directory`` and take an exclusive ``flock`` on ``directory/name`` (one process at a time; the OS
    releases it when the process dies, even on SIGKILL), waiting up to ``wait_s`` seconds for a holder that
    is stopping; our pid is written into the file for the next one's message. Returns the locked fd: closing
    it (the only descriptor) releases the lock.

    Raises:
        OSError: the directory or the lock file cannot be created.
        DirectoryBusy: another process holds the lock.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DirectoryBusy(directory, holder) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # a full disk: the lock holds anyway, only the pid in a later message is missing
        pass
    return fd
