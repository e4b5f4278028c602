"""The experience link's on-disk spool of chunk records not yet acked by the learner.

Layout of ``directory``::

    stream.json   {"robot_id": ..., "stream": ...}   created once; a new spool is a new stream
    acked.json    {"acked": N}                       every seq <= N is stored by the learner
    log/          DurableLog segments, key = seq, payload = the packed wire frames of the record

Every record is appended (with its seq) before it is sent, so a learner outage, a lost connection or
a robot restart costs nothing: what is above ``acked`` is sent again. Sequence numbers start at 1 and
are never reused within a stream. Used only by the experience link's I/O thread.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from tandem.core.durable import write_json_atomic
from tandem.core.durable_log import DurableLog


class RecordSpool:
    """Unacked records of one robot, on disk.

    Args:
        directory: the spool directory (created).
        robot_id: checked against the spool's owner (two robots must not share a spool).
        segment_bytes: log segment size; fully acked segments are deleted.
    """

    def __init__(self, directory: str | Path, robot_id: str, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        ident = self.directory / "stream.json"
        if ident.exists():
            info = json.loads(ident.read_text())
            if info.get("robot_id") != robot_id:
                raise ValueError(
                    f"spool {self.directory} belongs to robot {info.get('robot_id')!r}, not {robot_id!r}; "
                    "give each robot its own link.spool_dir"
                )
        else:
            info = {"robot_id": robot_id, "stream": f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}"}
            write_json_atomic(ident, info)
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

    @property
    def pending(self) -> int:
        """Records spooled and not acked."""
        return len(self._index)

    def append(self, seq: int, payload: bytes) -> None:
        """Spool record ``seq`` (must be :attr:`next_seq`)."""
        if seq != self.next_seq:
            raise ValueError(f"spool expects seq {self.next_seq}, got {seq}")
        self._index[seq] = self._log.append(seq, payload)
        self.next_seq += 1

    def read(self, seq: int) -> bytes | None:
        """The payload of an unacked record, or None if it is acked (or unknown)."""
        where = self._index.get(seq)
        if where is None:
            return None
        key, payload = self._log.read(*where)
        if key != seq:
            raise OSError(f"spool index points at seq {key}, expected {seq}")
        return payload

    def sync(self, fsync: bool) -> None:
        """Flush appended records to the OS; fsync if asked."""
        self._log.sync(fsync)

    def ack(self, seq: int) -> None:
        """Everything up to ``seq`` is stored by the learner."""
        seq = min(seq, self.next_seq - 1)
        if seq <= self.acked:
            return
        for s in range(self.acked + 1, seq + 1):
            self._index.pop(s, None)
        self.acked = seq

    def persist(self) -> None:
        """Write ``acked.json`` and delete segments holding only acked records."""
        if self.acked == self._persisted_acked:
            return
        self._log.sync(True)
        write_json_atomic(self.directory / "acked.json", {"acked": self.acked})
        self._persisted_acked = self.acked
        first = next(iter(self._index.values()), None)
        self._log.drop_segments_before(first[0] if first else self._log.current_segment)

    def close(self) -> None:
        """Persist the ack and close the log."""
        self.persist()
        self._log.close()
