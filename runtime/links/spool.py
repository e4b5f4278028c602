"""The experience link's on-disk spool of chunk records not yet acked by the learner.

Layout of ``directory``::

    LOCK          flock of the session using the spool (holds its pid)
    stream.json   {"robot_id": ..., "stream": ...}   created once; a new spool is a new stream
    acked.json    {"acked": N}                       every seq <= N is stored by the learner
    log/          DurableLog segments, key = seq, payload = the packed wire frames of the record

Every record is appended (with its seq) before it is sent, so a learner outage, a lost connection or
a robot restart costs nothing: what is above ``acked`` is sent again. Sequence numbers start at 1 and
are never reused within a stream: one session at a time holds the spool (``LOCK``; a second one is
refused with a config error naming the spool and how to choose another), and each session continues
above the highest seq the spool ever held (``acked.json`` and the log). Used only by the experience
link's I/O thread.

Damage: a record whose log entry is corrupt (found by the log's CRC, on open or when read) is *lost*:
its seq is in :attr:`RecordSpool.lost`, and the link sends a placeholder the learner refuses and
tombstones, so the stream moves on instead of stalling on a gap.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

from tandem.core.durable import DirectoryBusy, lock_directory, write_json_atomic
from tandem.core.durable_log import DurableLog
from tandem.core.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = "LOCK"


def _choose_another(robot_id: str) -> str:
    return (f"give this session another robot id (link.robot_id=NAME: its spool is ~/.cache/tandem/spool/NAME) "
            f"or its own spool (link.spool_dir=DIR); robot {robot_id!r} runs one session at a time")


def lock_spool(directory: Path, robot_id: str) -> int:
    """Take the spool's ``LOCK`` (``tandem.core.durable.lock_directory``); its fd.

    Raises:
        ConfigError: another session holds the spool, or the directory is not writable.
    """
    try:
        return lock_directory(directory, LOCK_FILE)
    except OSError as exc:
        raise ConfigError("link.spool_dir", str(directory),
                          f"the robot's spool directory cannot be written ({exc.strerror or exc}); "
                          "set link.spool_dir=DIR to a writable directory") from None
    except DirectoryBusy as busy:
        raise ConfigError("link.spool_dir", str(directory),
                          f"is in use by another session (pid {busy.holder}); {_choose_another(robot_id)}") from None


class RecordSpool:
    """Unacked records of one robot, on disk.

    Args:
        directory: the spool directory (created).
        robot_id: checked against the spool's owner (two robots must not share a spool).
        segment_bytes: log segment size; fully acked segments are deleted.
    """

    def __init__(self, directory: str | Path, robot_id: str, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self._lock_fd: int | None = lock_spool(self.directory, robot_id)
        try:
            self._open(robot_id, segment_bytes)
        except BaseException:
            self._unlock()
            raise

    def _open(self, robot_id: str, segment_bytes: int) -> None:
        ident = self.directory / "stream.json"
        if ident.exists():
            info = json.loads(ident.read_text())
            if info.get("robot_id") != robot_id:
                raise ConfigError("link.spool_dir", str(self.directory),
                                  f"belongs to robot {info.get('robot_id')!r}, not {robot_id!r}; "
                                  "give each robot its own link.spool_dir")
        else:
            info = {"robot_id": robot_id, "stream": f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}"}
            try:
                write_json_atomic(ident, info)
            except OSError as exc:
                raise ConfigError("link.spool_dir", str(self.directory),
                                  f"the robot's spool directory cannot be written ({exc.strerror or exc}); "
                                  "set link.spool_dir=DIR to a writable directory with free space") from None
        self.robot_id = robot_id
        self.stream: str = info["stream"]
        acked_path = self.directory / "acked.json"
        self.acked = int(json.loads(acked_path.read_text())["acked"]) if acked_path.exists() else 0
        self._persisted_acked = self.acked
        self._log = DurableLog(self.directory / "log", segment_bytes)
        self._index: dict[int, tuple[int, int]] = {}
        top = self.acked
        for seg, offset, seq, _ in self._log.scan():
            top = max(top, seq)
            if seq > self.acked:
                self._index[seq] = (seg, offset)
        self.next_seq = top + 1
        self.durable_seq = top  # every seq <= this is fsynced in the log (or acked)
        # unacked seqs whose entries were damaged (skipped by the log's scan, or found corrupt on read)
        self.lost: set[int] = {s for s in range(self.acked + 1, top + 1) if s not in self._index}
        self.corrupt_entries = self._log.corrupt_entries
        if self.lost:
            log.error("spool %s: %d unacked records are damaged and lost (seqs %s...); the learner is told to skip them",
                      self.directory, len(self.lost), sorted(self.lost)[:5])
        self._unsynced: list[int] = []

    @property
    def pending(self) -> int:
        """Records spooled and not acked."""
        return len(self._index)

    def append(self, seq: int, payload: bytes) -> None:
        """Buffer record ``seq`` (must be :attr:`next_seq`); it is spooled once :meth:`sync` succeeds.

        Raises:
            OSError: the log could not start a new segment (a full disk); nothing was appended.
        """
        if seq != self.next_seq:
            raise ValueError(f"spool expects seq {self.next_seq}, got {seq}")
        self._index[seq] = self._log.append(seq, payload)
        self._unsynced.append(seq)
        self.next_seq += 1

    def read(self, seq: int) -> bytes | None:
        """The payload of an unacked record, or None if it is acked, unknown or damaged (then in :attr:`lost`)."""
        where = self._index.get(seq)
        if where is None:
            return None
        try:
            key, payload = self._log.read(*where)
            if key != seq:
                raise OSError(f"spool index points at seq {key}, expected {seq}")
        except OSError as exc:
            log.error("spool %s: record %d is damaged and lost (%s); the learner is told to skip it", self.directory, seq, exc)
            self._index.pop(seq, None)
            self.lost.add(seq)
            self.corrupt_entries += 1
            return None
        return payload

    def sync(self, fsync: bool) -> None:
        """Write appended records to the OS; fsync if asked.

        Raises:
            OSError: the write failed (a full disk); call again, or :meth:`rollback` the unwritten records.
        """
        self._log.sync(fsync)
        self._unsynced.clear()
        if fsync:
            self.durable_seq = self.next_seq - 1

    def rollback(self) -> int:
        """Take back the records appended since the last successful :meth:`sync` (their seqs are given
        again to the next appends); returns how many."""
        n = len(self._unsynced)
        for seq in self._unsynced:
            self._index.pop(seq, None)
        self._unsynced.clear()
        self._log.discard_unflushed()
        self.next_seq -= n
        return n

    def ack(self, seq: int) -> None:
        """Everything up to ``seq`` is stored by the learner."""
        seq = min(seq, self.next_seq - 1)
        if seq <= self.acked:
            return
        for s in range(self.acked + 1, seq + 1):
            self._index.pop(s, None)
            self.lost.discard(s)
        self.acked = seq

    def persist(self) -> None:
        """Write ``acked.json`` and delete segments holding only acked records.

        Raises:
            OSError: ``acked.json`` could not be written (a full disk); call again later.
        """
        if self.acked == self._persisted_acked:
            return
        self._log.sync(True)
        write_json_atomic(self.directory / "acked.json", {"acked": self.acked})
        self._persisted_acked = self.acked
        first = next(iter(self._index.values()), None)
        self._log.drop_segments_before(first[0] if first else self._log.current_segment)

    def close(self) -> None:
        """Persist the ack, close the log and release the spool's lock (the lock even if writing fails)."""
        try:
            try:
                self.persist()
            finally:
                self._log.close()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the only descriptor releases the flock
            self._lock_fd = None
