"""An append-only, CRC-checked log in numbered segment files: the robot's spool and the learner's store.

Entry layout (little endian): ``magic u32 | length u32 | crc32 u32 | key u64 | payload[length]``; the
CRC covers the key and the payload.

Reading back (:meth:`DurableLog.scan`) tells two kinds of damage apart:

- **A torn tail.** A process killed mid-write leaves at most one incomplete entry at the very end of
  the last segment, with no valid entry after it. With ``repair`` it is truncated (its bytes are kept
  beside the segment in ``seg-N.log.torn-<offset>``), so appends continue after the last whole entry.
- **Corruption in the middle** (a flipped bit, a bad sector). A bad entry followed by valid ones is
  skipped: the scan finds the next entry whose magic and CRC check out and goes on from there. It is
  counted (:attr:`DurableLog.corrupt_entries`, :attr:`DurableLog.corrupt_bytes`, one
  :attr:`DurableLog.corrupt_regions` item per region) and logged, never truncated: the entries after
  it are as good as they were. A bad end of a segment that is not the last one is counted the same way.

Writes are buffered in memory by :meth:`DurableLog.append`; :meth:`DurableLog.sync` writes them to the
file with ``os.write`` (they then survive a process kill) and fsyncs if asked. A failed write (a full
disk) truncates the file back to its last whole entry and keeps the buffer, so the caller can retry the
same sync later or take the entries back with :meth:`DurableLog.discard_unflushed`: the file never holds
half an entry written by this process. Whole segments are deleted once their entries are no longer needed.
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
_MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_ENTRY_BYTES = 1 << 31


def _name(segment: int) -> str:
    return f"seg-{segment:08d}.log"


def _crc(key: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<Q", key)))


def _entry_at(data: bytes, offset: int) -> tuple[int, bytes, int] | None:
    """``(key, payload, end)`` of a valid entry starting at ``offset`` of ``data``, else None."""
    if offset + _HEAD.size > len(data):
        return None
    magic, length, crc, key = _HEAD.unpack_from(data, offset)
    end = offset + _HEAD.size + length
    if magic != MAGIC or end > len(data):
        return None
    payload = data[offset + _HEAD.size : end]
    if _crc(key, payload) != crc:
        return None
    return key, payload, end


def _next_valid(data: bytes, start: int) -> int:
    """Offset of the first valid entry at or after ``start`` (-1: none)."""
    pos = data.find(_MAGIC_BYTES, start)
    while pos >= 0:
        if _entry_at(data, pos) is not None:
            return pos
        pos = data.find(_MAGIC_BYTES, pos + 1)
    return -1


class DurableLog:
    """Append-only log of ``(key, payload)`` entries.

    Args:
        directory: where the segments live (created).
        segment_bytes: start a new segment once the current one is larger than this.

    Call :meth:`scan` once after opening (it repairs a torn tail) before the first :meth:`append`.

    Attributes:
        truncated_bytes: bytes of torn tails cut off by :meth:`scan`.
        corrupt_entries, corrupt_bytes: damaged regions skipped by :meth:`scan` (not truncated), and their size.
        corrupt_regions: ``(segment, offset, bytes)`` of each skipped region.
    """

    def __init__(self, directory: str | Path, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.truncated_bytes = 0
        self.corrupt_entries = 0
        self.corrupt_bytes = 0
        self.corrupt_regions: list[tuple[int, int, int]] = []
        self._scanned = False
        self._fd: int | None = None
        self._segment = -1
        self._flushed = 0  # bytes of the current segment in the file
        self._size = 0  # ... plus those still in the buffer
        self._buffer = bytearray()
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
        """Yield ``(segment, offset, key, payload)`` of every valid entry, oldest first.

        A damaged entry followed by valid ones is skipped and counted (never truncated). Damage that
        reaches the end of the last segment is a torn tail: with ``repair`` it is moved aside and the
        file truncated there. ``repair=False`` only reads (safe on a log another process is writing).
        """
        segments = self.segments()
        for seg in segments:
            path = self.path(seg)
            with open(path, "rb") as f:
                data = f.read()
            offset = 0
            while offset < len(data):
                entry = _entry_at(data, offset)
                if entry is not None:
                    key, payload, end = entry
                    yield seg, offset, key, payload
                    offset = end
                    continue
                resume = _next_valid(data, offset + 1)
                if resume < 0:
                    break
                self._count_corrupt(seg, offset, resume - offset)
                offset = resume
            if offset < len(data):
                if seg != segments[-1]:  # only the segment being appended to can be torn
                    self._count_corrupt(seg, offset, len(data) - offset)
                elif repair:
                    self._cut_torn_tail(path, data, offset)
        self._scanned = True
        self._segment = segments[-1] if segments else -1
        self._flushed = self._size = self.path(self._segment).stat().st_size if segments else 0

    def _count_corrupt(self, segment: int, offset: int, nbytes: int) -> None:
        self.corrupt_entries += 1
        self.corrupt_bytes += nbytes
        self.corrupt_regions.append((segment, offset, nbytes))
        log.error("log %s: %d corrupt bytes at offset %d skipped (the entries after them are kept)",
                  self.path(segment), nbytes, offset)

    def _cut_torn_tail(self, path: Path, data: bytes, offset: int) -> None:
        tail = data[offset:]
        self.truncated_bytes += len(tail)
        log.warning("log %s: truncating a torn tail of %d bytes at offset %d", path, len(tail), offset)
        try:  # keep the bytes: a tail is normally a half-written entry, but nothing is thrown away
            aside = path.with_name(f"{path.name}.torn-{offset}")
            with open(aside, "wb") as f:
                f.write(tail)
        except OSError as exc:
            log.warning("log %s: could not keep the torn tail aside (%s)", path, exc)
        with open(path, "r+b") as f:
            f.truncate(offset)
            os.fsync(f.fileno())

    def _open_segment(self, segment: int) -> None:
        if self._fd is not None:
            self._flush()  # may raise: nothing has changed then
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        fd = os.open(self.path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        self._segment = segment
        self._fd = fd
        self._flushed = self._size = os.fstat(fd).st_size
        fsync_path(self.directory)

    def append(self, key: int, payload: bytes | memoryview) -> tuple[int, int]:
        """Buffer one entry; returns ``(segment, offset)``. In the file after :meth:`sync`.

        Raises:
            OSError: a new segment could not be started (a full disk); nothing was appended.
        """
        if not self._scanned:
            for _ in self.scan():
                pass
        n = memoryview(payload).nbytes
        if n >= MAX_ENTRY_BYTES:
            raise ValueError(f"entry of {n} bytes is too large")
        if self._size >= self.segment_bytes or self._segment < 0:
            self._open_segment(self._segment + 1)
        elif self._fd is None:
            self._open_segment(self._segment)
        offset = self._size
        self._buffer += _HEAD.pack(MAGIC, n, _crc(key, payload), key)
        self._buffer += payload
        self._size += _HEAD.size + n
        return self._segment, offset

    def _flush(self) -> None:
        """Write the buffer; on failure truncate the file back to its last whole entry and keep the buffer."""
        if not self._buffer or self._fd is None:
            return
        view = memoryview(self._buffer)
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError:
            if done:
                try:
                    os.ftruncate(self._fd, self._flushed)
                except OSError as exc:  # cannot happen on a local disk; the scan would skip the half entry
                    log.error("log %s: could not undo a partial write (%s)", self.path(self._segment), exc)
            raise
        finally:
            view.release()
        self._flushed += len(self._buffer)
        self._buffer = bytearray()  # a new object: a view of the old one may still be alive

    def sync(self, fsync: bool = True) -> None:
        """Write buffered entries to the file (they then survive a process kill); fsync if asked.

        Raises:
            OSError: the write failed (a full disk). The entries stay buffered: call again later, or
                take them back with :meth:`discard_unflushed`.
        """
        if self._fd is not None:
            self._flush()
            if fsync:
                os.fsync(self._fd)

    @property
    def unflushed(self) -> int:
        """Bytes appended but not yet in the file."""
        return len(self._buffer)

    def discard_unflushed(self) -> None:
        """Drop the entries appended since the last successful :meth:`sync` (after a write failure)."""
        self._size = self._flushed
        self._buffer = bytearray()

    def read(self, segment: int, offset: int) -> tuple[int, bytes]:
        """``(key, payload)`` of the entry at ``(segment, offset)``.

        Raises:
            OSError: the entry is damaged.
        """
        if segment == self._segment and offset >= self._flushed:
            entry = _entry_at(bytes(self._buffer), offset - self._flushed)
            if entry is None:
                raise OSError(f"no entry buffered for {self.path(segment)} at {offset}")
            return entry[0], entry[1]
        fd = self._readers.get(segment)
        if fd is None:
            fd = self._readers[segment] = os.open(self.path(segment), os.O_RDONLY)
        head = os.pread(fd, _HEAD.size, offset)
        if len(head) != _HEAD.size:
            raise OSError(f"corrupt entry in {self.path(segment)} at {offset}")
        magic, length, crc, key = _HEAD.unpack(head)
        payload = os.pread(fd, length, offset + _HEAD.size) if magic == MAGIC else b""
        if magic != MAGIC or len(payload) != length or _crc(key, payload) != crc:
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
        """Write, fsync and close. Raises OSError if buffered entries could not be written (the files
        are closed anyway)."""
        try:
            if self._fd is not None:
                self.sync(True)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()
