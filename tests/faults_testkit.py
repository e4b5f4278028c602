"""Storage faults for tests: a full disk simulated at the lowest write call.

:class:`DiskFull` replaces ``os.write`` (the one call through which tandem's spools, logs and atomic
files reach the disk: ``tandem.core.durable.write_all``, ``DurableLog``, the recorder's tick spool) with
a wrapper that raises ``OSError(ENOSPC)`` for files under one directory while :attr:`DiskFull.full` is
set. Writes elsewhere (pytest, logging, other directories) pass through untouched.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

_REAL_WRITE = os.write


class DiskFull:
    """Make ``directory`` look full while :attr:`full` is set (use as a context manager or with monkeypatch).

    Args:
        directory: writes to files below it fail when full.
        partial: when the disk fills, let the first failing write put this many bytes down before the
            error (a write that fills the last free block), to check that no half entry is left behind.
    """

    def __init__(self, directory: str | Path, partial: int = 0) -> None:
        self.directory = os.path.realpath(directory)
        self.full = False
        self.failures = 0
        self.partial = partial
        self._lock = threading.Lock()
        self._partial_done = False

    def _below(self, fd: int) -> bool:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return target == self.directory or target.startswith(self.directory + os.sep)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """``os.write``, or ENOSPC for a file below the directory while full."""
        if self.full and self._below(fd):
            with self._lock:
                self.failures += 1
                if self.partial and not self._partial_done and len(memoryview(data)) > self.partial:
                    self._partial_done = True
                    return _REAL_WRITE(fd, memoryview(data)[: self.partial])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _REAL_WRITE(fd, data)

    def __enter__(self) -> DiskFull:
        os.write = self.write
        return self

    def __exit__(self, *exc: object) -> None:
        os.write = _REAL_WRITE
