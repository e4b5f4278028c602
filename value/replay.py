"""The learner's replay store: a durable log of every chunk record plus in-memory buffers to sample.

Durability: each accepted record is appended to a :class:`~tandem.core.durable_log.DurableLog`
(the packed wire frames, as received) and :meth:`ReplayStore.commit` flushes and fsyncs a batch
before the learner acks it. Restarting rebuilds the buffers and the duplicate filter from the log,
so a SIGKILL loses nothing that was acked. A damaged entry in the middle of the log (a flipped bit) is
skipped and counted (``counts["corrupt"]``, logged, in the learner's status), never used to truncate
what follows it: the streams go on from their highest stored seq. Only damage at the very end of the
log is a torn tail (a write cut short by a kill), cut off at open. Records whose content is invalid (NaN reward, wrong
fields) are logged as tombstones: their seq is consumed so the robot's stream moves on, and they
never reach a buffer.

Retractions: a ``retract`` message (a re-recorded episode, :func:`~tandem.protocol.messages.retract_message`)
takes its seq in the stream like a record and is logged like one; the records of its episode in that
stream with seqs from its ``from_seq`` on are marked ``retracted`` in their buffers and never sampled
(nor counted in :attr:`ReplayStore.size`). Rebuilding from the log replays the retraction in order, so it
holds across a learner restart.

Buffers: "demo" (source "demo"), "takeover" (any intervention tick in the chunk) and "autonomous";
each is a ring of ``capacity`` records held as stacked numpy arrays. :meth:`ReplayStore.sample` mixes
them by the configured ratios (an empty buffer's share goes to the others).

Bootstrap pairing: each record is linked to its episode's record starting where it ends (``next_state``,
``next_features``, ``next_base``, ``next_valid``; see :meth:`ReplayStore._insert`). A record with no
valid tick is a truncated episode's final observation (``ChunkRecord.is_final_observation``): it is
logged like any record but never enters a buffer (never sampled, not in :attr:`ReplayStore.size`,
counted in ``counts["final_observations"]``); it only becomes the bootstrap state of the episode's
last record(s). Without one (a dataset replayed, older robots, an episode cut off), a truncated last
record keeps ``next_valid`` false.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandem.core.durable import DirectoryBusy, lock_directory
from tandem.core.durable_log import DurableLog
from tandem.core.errors import ConfigError, TandemError
from tandem.core.validate import in_range, non_negative
from tandem.protocol.chunk_record import ARRAY_FIELDS, ChunkRecord
from tandem.protocol.messages import RETRACT, check_retract, message_to_record
from tandem.protocol.wire import Message, WireError, decode, encode, log_safe, pack_frames, unpack_frames

log = logging.getLogger(__name__)

BUFFERS = ("demo", "autonomous", "takeover")
TOMBSTONE = "tombstone"
STORED, DUPLICATE, GAP, REJECTED = "stored", "duplicate", "gap", "rejected"
LOCK_FILE = "LOCK"


class StoreBusyError(TandemError, RuntimeError):
    """Another learner process holds the replay store."""


@dataclass
class ReplayConfig:
    """Replay store settings.

    Attributes:
        capacity: records per buffer kept in memory for sampling (the log keeps everything).
        demo_ratio, autonomous_ratio, takeover_ratio: sampling mix (normalised over non-empty buffers).
        fsync: fsync each committed batch (off: survive a process kill, not a power cut).
        segment_mb: log segment size in MiB.
    """

    capacity: int = 100_000
    demo_ratio: float = 0.5
    autonomous_ratio: float = 0.25
    takeover_ratio: float = 0.25
    fsync: bool = True
    segment_mb: int = 64

    def __post_init__(self) -> None:
        in_range("replay.capacity", self.capacity, 1, 100_000_000)
        for name in ("demo_ratio", "autonomous_ratio", "takeover_ratio"):
            non_negative(f"replay.{name}", getattr(self, name))
        in_range("replay.ratio sum", self.demo_ratio + self.autonomous_ratio + self.takeover_ratio, 1e-9, 1e9)
        in_range("replay.segment_mb", self.segment_mb, 1, 4096)

    def ratios(self) -> dict[str, float]:
        """Buffer -> configured weight."""
        return {"demo": self.demo_ratio, "autonomous": self.autonomous_ratio, "takeover": self.takeover_ratio}


def buffer_of(record: ChunkRecord, source: str) -> str:
    """Which buffer a record belongs to: demo, takeover (any intervention tick) or autonomous."""
    if source == "demo":
        return "demo"
    return "takeover" if bool(np.any(record.intervention)) else "autonomous"


class RingBuffer:
    """``capacity`` records as stacked arrays (allocated at the first record's sizes)."""

    SCALARS = {"done": "bool", "truncated": "bool", "failed": "bool", "head_version": "int64", "base_version": "int64",
               "episode_id": "int64", "chunk_index": "int64"}
    # per-row bookkeeping of the buffer itself: a successor was linked; which insertion the row holds; the
    # record's seq and (robot, stream) key in its store; dropped by a retraction (never sampled)
    OWN = {"next_valid": "bool", "generation": "int64", "seq": "int64", "stream_key": "int64", "retracted": "bool"}
    # s_{t+H} and the base proposal there, copied from the episode's next record when it arrives
    NEXT = {"next_state": "state", "next_features": "features", "next_base": "base"}

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self.added = 0
        self.retracted = 0  # rows held that a retraction dropped
        self.data: dict[str, np.ndarray] = {}
        self.robot: list[str] = []
        self.shapes: dict[str, tuple[int, ...]] = {}

    def fits(self, record: ChunkRecord) -> bool:
        """Same sizes as the records already held."""
        return not self.shapes or all(np.shape(getattr(record, k)) == s for k, s in self.shapes.items())

    @property
    def live(self) -> int:
        """Rows available for sampling (held and not retracted)."""
        return self.size - self.retracted

    def live_rows(self) -> np.ndarray:
        """Indices of the rows available for sampling, int64[live]."""
        rows = np.arange(self.size)
        return rows[~self.data["retracted"][: self.size]] if self.retracted else rows

    def retract(self, stream_key: int, episode_id: int, from_seq: int, to_seq: int) -> int:
        """Mark the rows of (``stream_key``, ``episode_id``) with seqs in [from_seq, to_seq) retracted; how many."""
        if not self.size:
            return 0
        d, n = self.data, self.size
        hit = ((d["stream_key"][:n] == stream_key) & (d["episode_id"][:n] == episode_id) & (d["seq"][:n] >= from_seq)
               & (d["seq"][:n] < to_seq) & ~d["retracted"][:n])
        count = int(hit.sum())
        if count:
            d["retracted"][:n][hit] = True
            self.retracted += count
        return count

    def add(self, record: ChunkRecord, seq: int = 0, stream_key: int = 0) -> tuple[int, int]:
        """Insert (overwriting the oldest when full); returns (slot, generation). ``seq``: the record's seq in
        its stream; ``stream_key``: its (robot, stream) key in the store."""
        if not self.data:
            for name, (dtype, _) in ARRAY_FIELDS.items():
                shape = np.shape(getattr(record, name))
                self.shapes[name] = shape
                self.data[name] = np.zeros((self.capacity, *shape), dtype)
            for name, dtype in {**self.SCALARS, **self.OWN}.items():
                self.data[name] = np.zeros(self.capacity, dtype)
            for name, src in self.NEXT.items():
                self.data[name] = np.zeros_like(self.data[src])
            self.robot = [""] * self.capacity
        i = self.added % self.capacity
        for name in ARRAY_FIELDS:
            self.data[name][i] = getattr(record, name)
        for name in self.SCALARS:
            self.data[name][i] = getattr(record, name)
        for name in self.NEXT:
            self.data[name][i] = 0
        self.data["next_valid"][i] = False
        self.data["generation"][i] = self.added
        if self.added >= self.capacity and self.data["retracted"][i]:
            self.retracted -= 1  # a retracted row overwritten
        self.data["retracted"][i] = False
        self.data["seq"][i] = seq
        self.data["stream_key"][i] = stream_key
        self.robot[i] = record.robot_id
        self.added += 1
        self.size = min(self.added, self.capacity)
        return i, self.added - 1

    def fits_next(self, record: ChunkRecord) -> bool:
        """The record's state, features and base have the sizes of this buffer's rows (it can be a successor)."""
        return not self.shapes or all(np.shape(getattr(record, src)) == self.shapes[src] for src in self.NEXT.values())

    def link_next(self, slot: int, generation: int, record: ChunkRecord) -> bool:
        """Give row ``slot`` its successor's state, features and base (if the row still holds ``generation``)."""
        if self.data["generation"][slot] != generation:
            return False  # overwritten by the ring since
        for name, src in self.NEXT.items():
            self.data[name][slot] = getattr(record, src)
        self.data["next_valid"][slot] = True
        return True

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The rows ``idx`` of every field."""
        return {k: v[idx] for k, v in self.data.items()}


def record_entries(directory: str | Path) -> Iterator[tuple[Message, ChunkRecord | None]]:
    """Every entry of a store's log, oldest first: (message header, record or None for a tombstone or a
    retraction). Retracted records are listed too (the log keeps everything): see :meth:`ReplayStore.sample`."""
    log_ = DurableLog(Path(directory) / "log")
    for _, _, _, payload in log_.scan(repair=False):
        msg = decode(unpack_frames(payload), copy=True)
        yield msg, (None if msg.kind in (TOMBSTONE, RETRACT) else message_to_record(msg))
    log_.close()


class ReplayStore:
    """Durable, deduplicating replay store (one per learner; thread-safe).

    Args:
        directory: where the log lives (created).
        config: capacity, mixing ratios, fsync.
        lock_wait_s: wait this long for a learner that is still stopping to release the store.

    Raises:
        StoreBusyError: another learner process holds the store (its pid is in the message).
        ConfigError: the directory cannot be created or written (field ``learner.store_dir``).
    """

    def __init__(self, directory: str | Path, config: ReplayConfig | None = None, lock_wait_s: float = 0.0) -> None:
        self.directory = Path(directory)
        self.config = config or ReplayConfig()
        self.buffers = {name: RingBuffer(self.config.capacity) for name in BUFFERS}
        self.counts = {"stored": 0, "tombstones": 0, "incompatible": 0, "duplicates": 0, "gaps": 0,
                       "corrupt": 0, "corrupt_bytes": 0, "torn_bytes": 0, "retractions": 0, "retracted": 0,
                       "final_observations": 0}
        self._last: dict[tuple[str, str], int] = {}
        self._stream_keys: dict[tuple[str, str], int] = {}  # (robot, stream) -> its number in the buffers
        # (robot, stream, episode) -> {start tick of the successor: [(buffer, slot, generation), ...]} of the
        # episode's records still waiting for the record that starts where they end (several: the
        # overlapping windows that all end at a truncated episode's last tick wait for its final observation)
        self._waiting: dict[tuple[str, str, int], dict[int, list[tuple[str, int, int]]]] = {}
        self._lock = threading.Lock()
        self._owner = lock_store(self.directory, lock_wait_s)
        try:
            self._log = DurableLog(self.directory / "log", self.config.segment_mb * 1024 * 1024)
            self._recover()
        except BaseException:
            self._release()
            raise

    def _recover(self) -> None:
        """Rebuild the buffers and the duplicate filter from the log (damaged entries skipped and counted)."""
        self._dirty = False
        self.last_reject_reason = ""
        recovered = 0
        for _, _, _, payload in self._log.scan():
            try:
                msg = decode(unpack_frames(payload), copy=True)
            except WireError as exc:  # a CRC-valid entry this store did not write: skip it, counted
                self.counts["corrupt"] += 1
                log.error("replay %s: unreadable log entry skipped (%s)", self.directory, exc)
                continue
            key = (msg.robot, str(msg.meta.get("stream", "")))
            self._last[key] = max(self._last.get(key, 0), msg.seq)
            if msg.kind == TOMBSTONE:
                self.counts["tombstones"] += 1
            elif msg.kind == RETRACT:
                self._retract(msg)
            else:
                self._insert(message_to_record(msg), str(msg.meta.get("source", "online")), key[1], msg.seq)
            recovered += 1
        self.counts["corrupt"] += self._log.corrupt_entries
        self.counts["corrupt_bytes"] = self._log.corrupt_bytes
        self.counts["torn_bytes"] = self._log.truncated_bytes
        if recovered:
            log.info("replay %s: recovered %d records (%d streams)", self.directory, recovered, len(self._last))
        if self._log.corrupt_entries:
            log.error("replay %s: %d damaged regions (%d bytes) of the log were skipped; the records in them are "
                      "lost, every record after them is kept (see learner status.json replay_log)", self.directory,
                      self._log.corrupt_entries, self._log.corrupt_bytes)

    # ------------------------------------------------------------------ ingest (link I/O thread)

    def last_seq(self, robot: str, stream: str) -> int:
        """Highest seq stored for (robot, stream); 0 if none."""
        return self._last.get((robot, stream), 0)

    def check_seq(self, robot: str, stream: str, seq: int) -> str:
        """STORED if ``seq`` is the next one expected, else DUPLICATE or GAP (nothing is changed)."""
        last = self.last_seq(robot, stream)
        if seq <= last:
            return DUPLICATE
        return STORED if seq == last + 1 else GAP

    def offer(self, msg: Message) -> str:
        """Store a decoded ``chunk`` (or ``retract``) message if it is the next of its stream.

        Returns STORED, DUPLICATE, GAP (nothing stored) or REJECTED (content invalid: a tombstone is
        stored in its place). Durable only after :meth:`commit`. A ``retract`` message is logged and
        drops the records it names from the buffers (:meth:`_retract`).
        """
        stream = str(msg.meta.get("stream", ""))
        verdict = self.check_seq(msg.robot, stream, msg.seq)
        if verdict != STORED:
            self.counts["duplicates" if verdict == DUPLICATE else "gaps"] += 1
            return verdict
        try:
            record = check_retract(msg) if msg.kind == RETRACT else message_to_record(msg)
        except WireError as exc:
            self.last_reject_reason = exc.reason
            self._tombstone(msg, exc.reason)
            return REJECTED
        with self._lock:
            self._log.append(msg.seq, pack_frames(encode(msg)))
            self._dirty = True
            self._last[(msg.robot, stream)] = msg.seq
            if msg.kind == RETRACT:
                self._retract(msg)
            else:
                self._insert(record, str(msg.meta.get("source", "online")), stream, msg.seq)
        return STORED

    def _retract(self, msg: Message) -> int:
        """Drop the records a ``retract`` message names: its episode's in its (robot, stream), seqs from
        ``from_seq`` up to its own. Returns how many rows of the buffers were dropped (counted, logged)."""
        episode, from_seq, run = check_retract(msg)
        stream = str(msg.meta["stream"])
        key = self._stream_keys.get((msg.robot, stream))
        dropped = 0
        if key is not None:
            dropped = sum(buf.retract(key, episode, from_seq, msg.seq) for buf in self.buffers.values())
        self._waiting.pop((msg.robot, stream, episode), None)
        self.counts["retractions"] += 1
        self.counts["retracted"] += dropped
        log.info("replay %s: robot %s retracted episode %d of run %s (%d records dropped)", self.directory,
                 log_safe(msg.robot), episode, run or "?", dropped)
        return dropped

    def _tombstone(self, msg: Message, reason: str) -> None:
        stone = Message(kind=TOMBSTONE, seq=msg.seq, robot=msg.robot, meta={"stream": msg.meta.get("stream", ""), "reason": reason})
        with self._lock:
            self._log.append(msg.seq, pack_frames(encode(stone)))
            self._dirty = True
            self._last[(msg.robot, str(msg.meta.get("stream", "")))] = msg.seq
            self.counts["tombstones"] += 1

    def _insert(self, record: ChunkRecord, source: str, stream: str = "", seq: int = 0) -> None:
        """Add to its buffer and link it as the successor of the same episode's previous chunk.

        Records of one stream arrive in the order of their first ticks, so the predecessor of a record
        starting at tick t (the record of the same robot, stream and episode that starts at t - H: the
        previous chunk, or with overlapping records the previous window H ticks back) is already
        stored: it gets ``next_state``/``next_features``/``next_base`` from this record and
        ``next_valid`` true (the TD target's bootstrap state s_{t+H}).

        A record that ends its episode truncated (time limit, stop), with h valid ticks, waits instead
        for the episode's final observation, which starts h ticks after it (s_{t+h}); a ``done`` record
        waits for nothing. The final observation itself (no valid tick) only links its waiting
        predecessors: it enters no buffer.
        """
        key = (record.robot_id, stream, int(record.episode_id))
        start = record.first_tick
        if record.is_final_observation:
            self.counts["final_observations"] += 1
            if record.truncated and not record.done:
                waiting = self._waiting.pop(key, {})
                for prev in waiting.pop(start, []):
                    if self.buffers[prev[0]].fits_next(record):
                        self.buffers[prev[0]].link_next(prev[1], prev[2], record)
                    else:
                        self.counts["incompatible"] += 1
            return
        name = buffer_of(record, source)
        buf = self.buffers[name]
        if not buf.fits(record):
            self.counts["incompatible"] += 1
            return
        stream_key = self._stream_keys.setdefault((record.robot_id, stream), len(self._stream_keys))
        slot, generation = buf.add(record, seq, stream_key)
        self.counts["stored"] += 1
        waiting = self._waiting.pop(key, {})
        for prev in waiting.pop(start, []):
            self.buffers[prev[0]].link_next(prev[1], prev[2], record)
        waiting = {t: w for t, w in waiting.items() if t > start}  # earlier successors can no longer come
        if not record.done:
            # a truncated record's successor is the final observation, right after its last valid tick
            ends = start + int(np.count_nonzero(record.valid)) if record.truncated else start + record.horizon
            waiting.setdefault(ends, []).append((name, slot, generation))
        if waiting:
            self._waiting[key] = waiting

    def commit(self) -> None:
        """Make everything offered so far durable (flush; fsync unless configured off)."""
        with self._lock:
            if self._dirty:
                self._log.sync(self.config.fsync)
                self._dirty = False

    # ------------------------------------------------------------------ sampling (training thread)

    @property
    def size(self) -> int:
        """Records available for sampling (retracted ones excluded)."""
        return sum(b.live for b in self.buffers.values())

    def sizes(self) -> dict[str, int]:
        """Records available for sampling, per buffer."""
        return {k: b.live for k, b in self.buffers.items()}

    def split(self, batch_size: int) -> dict[str, int]:
        """How many of ``batch_size`` come from each buffer (ratios over non-empty buffers)."""
        ratios = {k: r for k, r in self.config.ratios().items() if self.buffers[k].live > 0 and r > 0}
        if not ratios:
            ratios = {k: 1.0 for k, b in self.buffers.items() if b.live > 0}
        if not ratios:
            return {k: 0 for k in BUFFERS}
        total = sum(ratios.values())
        exact = {k: batch_size * r / total for k, r in ratios.items()}
        counts = {k: int(v) for k, v in exact.items()}
        for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: batch_size - sum(counts.values())]:
            counts[k] += 1
        return {k: counts.get(k, 0) for k in BUFFERS}

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A mixed batch: every record field stacked along axis 0, plus ``buffer`` (int8 index into BUFFERS).

        Buffers are sampled uniformly with replacement, retracted records never. Raises ValueError when the
        store is empty or the buffers hold records of different sizes.
        """
        with self._lock:
            parts = []
            for i, (name, n) in enumerate(self.split(batch_size).items()):
                if n == 0:
                    continue
                buf = self.buffers[name]
                if buf.retracted:
                    live = buf.live_rows()
                    rows = buf.take(live[rng.integers(0, len(live), n)])
                else:
                    rows = buf.take(rng.integers(0, buf.size, n))
                rows["buffer"] = np.full(n, i, np.int8)
                parts.append(rows)
        if not parts:
            raise ValueError("the replay store is empty")
        shapes = {tuple(v.shape[1:]) for p in parts for k, v in p.items() if k == "base"}
        if len(shapes) > 1:
            raise ValueError(f"buffers hold records of different sizes {shapes}")
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        """Commit and close the log; release the store (also when writing fails)."""
        try:
            self.commit()
            with self._lock:
                self._log.close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._owner is not None:
            os.close(self._owner)  # closing the only descriptor releases the flock
            self._owner = None


def lock_store(directory: Path, wait_s: float = 0.0) -> int:
    """Take the store's ``LOCK`` (one learner per store: ``tandem.core.durable.lock_directory``), waiting up
    to ``wait_s`` for a learner that is stopping; the locked fd (holds the pid).

    Raises:
        StoreBusyError: another learner process holds it.
        ConfigError: the directory cannot be created or written.
    """
    try:
        return lock_directory(directory, LOCK_FILE, wait_s)
    except OSError as exc:
        raise ConfigError("learner.store_dir", str(directory.parent),
                          f"the learner's store cannot be written ({exc.strerror or exc}); "
                          "set learner.store_dir (learn.store_dir with learn.spawn=true) to a writable directory") from None
    except DirectoryBusy as busy:
        raise StoreBusyError(
            f"replay store {directory} is in use by another learner process (pid {busy.holder}); stop it "
            "(one learner per store) or give this learner another learner.store_dir") from None
