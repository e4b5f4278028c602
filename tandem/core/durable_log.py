"""An append-only, CRC-checked log in numbered segment files: the robot's spool and the learner's store.

Entry layout (little endian): ``magic u32 | length u32 | crc32 u32 | key u64 | payload[length]``; the
CRC covers the key and the payload. A process killed mid-write leaves at most one torn entry at the
end of the last segment; :meth:`DurableLog.scan` stops there and truncates it, so every entry that
survives is complete. Writes go through a buffered file; :meth:`DurableLog.sync` flushes and fsyncs
(batch many appends per sync). Whole segments are deleted once their entries are no longer needed.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from tandem.core.durable import fsync_path

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<IIIQ")
MAGIC = 0x544E444D  # "MDNT"
MAX_ENTRY_BYTES = 1 << 31


def _name(segment: int) -> str:
    return f"seg-{segment:08d}.log"


class DurableLog:
    """Append-only log of ``(key, payload)`` entries.

    Args:
        directory: where the segments live (created).
        segment_bytes: start a new segment once the current one is larger than this.

    Call :meth:`scan` once after opening (it repairs a torn tail) before the first :meth:`append`.
    """

    def __init__(self, directory: str | Path, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.truncated_bytes = 0
        self._scanned = False
        self._file = None
        self._segment = -1
        self._size = 0
        self._readers: dict[int, int] = {}

    def segments(self) -> list[int]:
        """Segment numbers on disk, oldest first."""
        out = []
        for p in self.directory.glob("seg-*.log"):
            try:
                out.append(int(p.stem[4:]))
            except ValueError:
                continue
        return sorted(out)

    def path(self, segment: int) -> Path:
        """File of ``segment``."""
        return self.directory / _name(segment)

    def scan(self, repair: bool = True) -> Iterator[tuple[int, int, int, bytes]]:
        """Yield ``(segment, offset, key, payload)`` of every complete entry, oldest first.

        A bad or torn entry ends its segment: with ``repair`` the file is truncated there (later
        segments are still read; only the last one can normally be torn). ``repair=False`` only reads
        (safe on a log another process is writing).
        """
        segments = self.segments()
        for seg in segments:
            path = self.path(seg)
            with open(path, "rb") as f:
                data = f.read()
            offset = 0
            while offset < len(data):
                if offset + _HEAD.size > len(data):
                    break
                magic, length, crc, key = _HEAD.unpack_from(data, offset)
                end = offset + _HEAD.size + length
                if magic != MAGIC or end > len(data):
                    break
                payload = data[offset + _HEAD.size : end]
                if zlib.crc32(payload, zlib.crc32(struct.pack("<Q", key))) != crc:
                    break
                yield seg, offset, key, payload
                offset = end
            if offset < len(data) and repair:
                self.truncated_bytes += len(data) - offset
                log.warning("log %s: truncating %d bytes of torn/corrupt tail at offset %d", path, len(data) - offset, offset)
                with open(path, "r+b") as f:
                    f.truncate(offset)
                    os.fsync(f.fileno())
        self._scanned = True
        self._segment = segments[-1] if segments else -1
        self._size = self.path(self._segment).stat().st_size if segments else 0

    def _open_segment(self, segment: int) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        self._segment = segment
        self._file = open(self.path(segment), "ab", buffering=1 << 20)
        self._size = self._file.tell()
        fsync_path(self.directory)

    def append(self, key: int, payload: bytes | memoryview) -> tuple[int, int]:
        """Buffer one entry; returns ``(segment, offset)``. Durable only after :meth:`sync`."""
        if not self._scanned:
            for _ in self.scan():
                pass
        if self._size >= self.segment_bytes or self._segment < 0:
            self._open_segment(self._segment + 1)
        elif self._file is None:
            self._open_segment(self._segment)
        n = memoryview(payload).nbytes
        if n >= MAX_ENTRY_BYTES:
            raise ValueError(f"entry of {n} bytes is too large")
        crc = zlib.crc32(payload, zlib.crc32(struct.pack("<Q", key)))
        offset = self._size
        self._file.write(_HEAD.pack(MAGIC, n, crc, key))
        self._file.write(payload)
        self._size += _HEAD.size + n
        return self._segment, offset

    def sync(self, fsync: bool = True) -> None:
        """Flush buffered entries to the OS (they then survive a process kill); fsync if asked."""
        if self._file is not None:
            self._file.flush()
            if fsync:
                os.fsync(self._file.fileno())

    def read(self, segment: int, offset: int) -> tuple[int, bytes]:
        """``(key, payload)`` of the entry at ``(segment, offset)``."""
        if segment == self._segment and self._file is not None:
            self._file.flush()
        fd = self._readers.get(segment)
        if fd is None:
            fd = self._readers[segment] = os.open(self.path(segment), os.O_RDONLY)
        head = os.pread(fd, _HEAD.size, offset)
        magic, length, crc, key = _HEAD.unpack(head)
        payload = os.pread(fd, length, offset + _HEAD.size)
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload, zlib.crc32(struct.pack("<Q", key))) != crc:
            raise OSError(f"corrupt entry in {self.path(segment)} at {offset}")
        return key, payload

    @property
    def current_segment(self) -> int:
        """The segment being appended to (-1 if none)."""
        return self._segment

    def drop_segments_before(self, segment: int) -> int:
        """Delete every segment numbered below ``segment`` (never the current one). Returns the count."""
        dropped = 0
        for seg in self.segments():
            if seg >= segment or seg >= self._segment:
                continue
            fd = self._readers.pop(seg, None)
            if fd is not None:
                os.close(fd)
            self.path(seg).unlink(missing_ok=True)
            dropped += 1
        return dropped

    def close(self) -> None:
        """Flush, fsync and close."""
        if self._file is not None:
            self.sync(True)
            self._file.close()
            self._file = None
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
