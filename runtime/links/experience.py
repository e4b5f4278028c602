"""Experience link, robot side: chunk records up to the learner, exactly once.

The control thread calls :meth:`ExperienceLink.send` (a queue put, never blocks). The link's I/O
thread numbers each record, appends it to the on-disk :class:`~tandem.runtime.links.spool.RecordSpool`, and sends
it over a DEALER socket to the learner's ROUTER, at most ``window`` unacked records in flight. The
learner stores a record durably, then acks the highest seq it holds for this robot's stream; the
robot forgets acked records. The learner drops duplicates and refuses out-of-order seqs (answering
with a ``gap`` ack), so records enter the store exactly once and in order.

Liveness: the robot sends a heartbeat every ``heartbeat_s``; the learner answers with its incarnation
id and the last seq it stored for the stream. After ``timeout_s`` of silence the robot rebuilds its
socket and, once a learner answers again, resends everything above the learner's last stored seq.
The control loop never notices: it keeps running and records keep piling up in the spool.

Retraction: :meth:`ExperienceLink.retract` (a re-recorded episode) queues a ``retract`` message behind the
episode's records. It takes the next seq of the stream, so it is spooled, sent, resent and acked exactly
like a record and reaches the learner after every record it names: those with seqs from the episode's
first record on (``from_seq``, tracked here as records are spooled), which the learner's replay then
drops.

Storage faults degrade, never kill: when the spool cannot be written (a full disk), the records taken
from the queue are rolled back out of the spool and wait in memory (``held``, at most ``max_held``;
beyond that the newest are dropped and counted in ``lost`` and ``lost_ticks``), spooling pauses and is
retried every ``SPOOL_RETRY_S``; once the disk takes writes again everything held is spooled and sent,
in order. A record is sent only once it is fsynced in the spool, so a seq the learner may hold is never
given to another record, even after a power loss. A spooled record found corrupt on disk is sent as a
placeholder the learner refuses (a tombstone takes its seq), counted in ``damaged``.
"""

from __future__ import annotations

import collections
import collections.abc
import itertools
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, field

import zmq

from tandem.protocol.chunk_record import ChunkRecord
from tandem.protocol.messages import ACK, CHUNK, HB, RECORD_SCHEMA, record_to_message, retract_message
from tandem.protocol.security import open_socket
from tandem.protocol.wire import Message, WireError, decode, encode, pack_frames, unpack_frames
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.spool import RecordSpool

log = logging.getLogger(__name__)

SPOOL_RETRY_S = 0.5  # while the spool cannot be written, retry this often
MAX_HELD = 50_000  # records kept in memory while the spool cannot be written (then the newest are lost)
FIRST_SEQS_KEPT = 64  # episodes whose first record's seq is remembered (for their retraction)


@dataclass(frozen=True)
class Retraction:
    """A re-recorded episode's records to be dropped by the learner (queued like a record)."""

    episode_id: int
    run: str = ""


@dataclass
class ExperienceStats:
    """Counters of the experience link (read from any thread)."""

    queued: int = 0
    spooled: int = 0
    sent: int = 0
    resent: int = 0
    acked: int = 0
    pending: int = 0
    reconnects: int = 0
    learner_changes: int = 0
    connected: bool = False
    last_heard_s: float = -1.0
    malformed: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)
    send_max_ms: float = 0.0  # the control thread's cost of send(): wall clock
    send_cpu_max_ms: float = 0.0  # ... and CPU time of that thread (immune to preemption)
    # storage faults: the spool could not be written (a full disk); spooling pauses, records wait in memory
    spool_paused: bool = False
    spool_pauses: int = 0  # times spooling paused
    spool_errors: list[str] = field(default_factory=list)  # the first few distinct errors
    held: int = 0  # records waiting in memory for the spool
    lost: int = 0  # records never spooled: more than max_held waited while the disk was full
    lost_ticks: int = 0  # their valid ticks
    damaged: int = 0  # spooled records found corrupt on disk; the learner is told to skip their seqs
    retractions: int = 0  # re-recorded episodes whose records the learner was asked to drop (spooled)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


class ExperienceLink:
    """Robot -> learner record stream with an on-disk spool.

    Args:
        config: the robot's LinkConfig (endpoint, robot id, spool, timing).
        context: a zmq context to share (default: the process's global instance).
        source: "online" for live experience, "demo" for demonstrations.
    """

    def __init__(self, config: LinkConfig, context: zmq.Context | None = None, source: str = "online") -> None:
        self.config = config
        self.robot_id = config.robot_id
        self.source = source
        self.stats = ExperienceStats()
        self._context = context or zmq.Context.instance()
        self._queue: queue.SimpleQueue[ChunkRecord | Retraction] = queue.SimpleQueue()
        # episode id -> seq of its first record in this link (the newest FIRST_SEQS_KEPT episodes); I/O thread
        self._first_seq: dict[int, int] = {}
        self._last_episode: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()
        self.stream = ""
        self.max_held = MAX_HELD

    # ------------------------------------------------------------------ control-thread API

    def send(self, record: ChunkRecord) -> None:
        """Hand a record to the I/O thread (non-blocking; safe from the control thread)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        if record.robot_id != self.robot_id:
            raise ValueError(f"record of robot {record.robot_id!r} sent on {self.robot_id!r}'s link")
        self.stats.queued += 1
        self._queue.put(record)
        wall, cpu = (time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3
        self.stats.send_max_ms = max(self.stats.send_max_ms, wall)
        self.stats.send_cpu_max_ms = max(self.stats.send_cpu_max_ms, cpu)

    __call__ = send  # usable directly as ChunkAssembler's on_record

    def retract(self, episode_id: int, run: str = "") -> None:
        """Ask the learner to drop every record of episode ``episode_id`` sent so far by this link (a
        re-recorded episode). Non-blocking; ordered after the records already handed to :meth:`send`.
        ``run``: the session's id, kept in the learner's log with the retraction."""
        self.stats.queued += 1
        self._queue.put(Retraction(int(episode_id), str(run)))

    def start(self) -> ExperienceLink:
        """Open the spool and start the I/O thread (returns self)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"experience-{self.robot_id}", daemon=True)
            self._thread.start()
            self._started.wait(10.0)
            if self._error is not None:
                raise self._error
        return self

    def wait_acked(self, timeout: float) -> bool:
        """Block until every record handed to :meth:`send` is acked, or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._all_acked():
                return True
            if self._thread is None or not self._thread.is_alive():
                return self._all_acked()
            time.sleep(0.01)
        return self._all_acked()

    def _all_acked(self) -> bool:
        s = self.stats
        return self._queue.empty() and s.held == 0 and s.spooled + s.lost >= s.queued and s.pending == 0

    def close(self, drain_s: float | None = None) -> bool:
        """Wait up to ``drain_s`` (default ``config.drain_s``) for acks, then stop. True if all were acked.

        Unacked records stay in the spool and are sent by the next link on the same spool.
        """
        if self._thread is None:
            return True
        done = self.wait_acked(self.config.drain_s if drain_s is None else drain_s)
        self._stop.set()
        self._thread.join(10.0)
        self._thread = None
        if not done:
            log.warning("experience link %s: %d records not acked yet; they stay in the spool", self.robot_id, self.stats.pending)
        if self.stats.held:
            log.error("experience link %s: %d records could not be spooled (%s) and are lost", self.robot_id,
                      self.stats.held, "; ".join(self.stats.spool_errors) or "the I/O thread stopped")
        if self.stats.lost:
            log.error("experience link %s: %d records (%d ticks) lost while the spool could not be written",
                      self.robot_id, self.stats.lost, self.stats.lost_ticks)
        return done

    # ------------------------------------------------------------------ I/O thread

    def _socket(self) -> zmq.Socket:
        return open_socket(
            self._context,
            zmq.DEALER,
            self.config.experience_endpoint,
            bind=False,
            max_message_bytes=self.config.max_message_bytes,
            keys_dir=self.config.keys_dir,
            field="link.experience endpoint",
            options={zmq.SNDHWM: max(1000, 2 * self.config.window), zmq.RCVHWM: 10000},
        )

    def _run(self) -> None:
        try:
            spool = RecordSpool(self.config.spool_path(), self.robot_id)
            sock = self._socket()
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._started.set()
            return
        self.stream = spool.stream
        self.stats.pending = spool.pending
        self._started.set()
        socks = {"dealer": sock}  # _loop replaces it when it reconnects: the one open now is closed here
        try:
            self._loop(spool, socks)
        except Exception:
            log.exception("experience link %s: I/O thread failed", self.robot_id)
        finally:
            socks["dealer"].close(0)
            try:
                spool.close()
            except OSError as exc:  # acked.json not written: the next session resends a few acked records
                self._spool_error(exc)

    def _loop(self, spool: RecordSpool, socks: dict[str, zmq.Socket]) -> None:
        cfg = self.config
        sock = socks["dealer"]
        cache: dict[int, list] = {}
        next_send = spool.acked + 1
        connected, learner_id, last_heard, rewound_at = False, None, 0.0, -1
        last_hb, last_fsync, last_persist = 0.0, 0.0, time.monotonic()
        socket_born = time.monotonic()
        # the highest seq that may have reached a learner: what this link sent, or anything an earlier
        # session on this spool spooled (and may have sent); an ack above it is refused, so a peer
        # answering as the learner cannot make the robot forget records it never sent
        sent_max = spool.next_seq - 1
        held: collections.deque[ChunkRecord] = collections.deque()  # taken from the queue, not yet spooled
        retry_at = 0.0
        self.stats.damaged = len(spool.lost)
        while not self._stop.is_set():
            now = time.monotonic()
            # 1. spool new records (seq assigned here); a full disk pauses this step, records wait in `held`
            self._take(held)
            n_new = 0
            if held and now >= retry_at:
                n_new = self._spool(spool, held, cache if connected else None, cfg.window)
                if n_new < 0:  # the spool could not be written: retry later
                    n_new, retry_at = 0, now + SPOOL_RETRY_S
                else:
                    retry_at = 0.0
            self.stats.held = len(held)
            if n_new:
                self.stats.pending = spool.pending  # before spooled: readers check spooled, then pending
                self.stats.spooled += n_new
            if spool.durable_seq < spool.next_seq - 1 and now - last_fsync >= cfg.spool_fsync_s:
                try:
                    spool.sync(True)
                    last_fsync = now
                except OSError as exc:  # written to the OS but not fsynced: sent once an fsync succeeds
                    self._spool_error(exc)
            # 2. send within the window (only what is fsynced in the spool)
            if connected:
                while next_send <= spool.durable_seq and next_send <= spool.acked + cfg.window:
                    frames = cache.pop(next_send, None)
                    if frames is None:
                        payload = spool.read(next_send)
                        if payload is not None:
                            frames = unpack_frames(payload)
                            self.stats.resent += 1
                        elif next_send in spool.lost:  # damaged on disk: the learner tombstones its seq
                            frames = encode(Message(kind=CHUNK, schema=RECORD_SCHEMA, seq=next_send, robot=self.robot_id,
                                                    meta={"stream": spool.stream, "lost": "spool_damaged"}))
                            self.stats.damaged = len(spool.lost)
                        else:  # acked meanwhile
                            next_send += 1
                            continue
                    try:
                        sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        cache[next_send] = frames
                        break
                    self.stats.sent += 1
                    sent_max = max(sent_max, next_send)
                    next_send += 1
            # 3. heartbeat
            if now - last_hb >= cfg.heartbeat_s:
                hb = Message(kind=HB, robot=self.robot_id, meta={"stream": spool.stream, "next_seq": spool.next_seq})
                try:
                    sock.send_multipart(encode(hb), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
                last_hb = now
            # 4. receive
            busy = n_new or (connected and next_send <= spool.durable_seq and next_send <= spool.acked + cfg.window)
            timeout_ms = 0 if busy else max(1, int(min(cfg.heartbeat_s - (now - last_hb), 0.005) * 1000))
            if sock.poll(timeout_ms, zmq.POLLIN):
                while True:
                    try:
                        frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        msg = decode(frames, cfg.max_message_bytes)
                    except WireError as exc:
                        self._count_malformed(exc.reason)
                        continue
                    if msg.meta.get("stream") != spool.stream or msg.kind not in (ACK, HB):
                        self._count_malformed("unexpected")
                        continue
                    ident = msg.meta.get("learner")
                    stored = msg.meta.get("acked", 0)
                    if not isinstance(stored, int) or isinstance(stored, bool):
                        self._count_malformed("bad_meta")
                        continue
                    if stored > sent_max:  # never forget records on an ack for seqs not sent
                        self._count_malformed("ack_above_sent")
                        continue
                    last_heard = time.monotonic()
                    if not connected or ident != learner_id:
                        if learner_id is not None and ident != learner_id:
                            self.stats.learner_changes += 1
                            log.info("experience link %s: learner changed (%s -> %s)", self.robot_id, learner_id, ident)
                        connected, learner_id = True, ident
                        spool.ack(stored)
                        next_send = spool.acked + 1
                        cache.clear()
                        rewound_at = -1
                        continue
                    spool.ack(stored)
                    if next_send <= spool.acked:
                        next_send = spool.acked + 1
                    if msg.meta.get("gap") and stored + 1 < next_send and rewound_at != stored:
                        next_send, rewound_at = stored + 1, stored
                    for s in [s for s in cache if s <= spool.acked]:
                        del cache[s]
            # 5. liveness: rebuild the socket after a silence, resend after the next answer
            now = time.monotonic()
            silent = now - (last_heard if connected else socket_born)
            if silent > cfg.timeout_s:
                if connected:
                    log.warning("experience link %s: learner silent for %.1f s, reconnecting", self.robot_id, silent)
                sock.close(0)
                sock = socks["dealer"] = self._socket()
                socket_born = now
                self.stats.reconnects += int(connected)
                connected = False
                cache.clear()
                next_send = spool.acked + 1
            if now - last_persist > 0.5:
                try:
                    spool.persist()
                except OSError as exc:  # acked.json not written: the acks are kept in memory, tried again
                    self._spool_error(exc)
                last_persist = now
            self.stats.acked = spool.acked
            self.stats.pending = spool.pending
            self.stats.connected = connected
            self.stats.last_heard_s = round(now - last_heard, 3) if last_heard else -1.0
        self._take(held)
        if held:  # a last try for what waited for the disk; what still cannot be written is lost
            n = self._spool(spool, held, None, 0)
            self.stats.spooled += max(n, 0)
        self._lose(held)
        held.clear()
        self.stats.held = 0
        try:
            spool.sync(True)
        except OSError as exc:
            self._spool_error(exc)
        self.stats.acked = spool.acked
        self.stats.pending = spool.pending

    def _take(self, held: collections.deque) -> None:
        """Move queued records into ``held``; beyond ``max_held`` (the disk is full) the newest are lost."""
        while True:
            try:
                rec = self._queue.get_nowait()
            except queue.Empty:
                return
            if len(held) >= self.max_held and isinstance(rec, ChunkRecord):
                self._lose([rec])
            else:
                held.append(rec)

    def _lose(self, records: collections.abc.Collection[ChunkRecord]) -> None:
        """Count ``records`` as lost (never spooled), with their valid ticks."""
        if not records:
            return
        if not self.stats.lost:
            log.error("experience link %s: the spool cannot be written and records are dropped "
                      "(counted in links.experience.lost)", self.robot_id)
        self.stats.lost_ticks += sum(int(r.valid.sum()) for r in records if isinstance(r, ChunkRecord))
        self.stats.lost += len(records)

    def _spool(self, spool: RecordSpool, held: collections.deque, cache: dict | None, window: int) -> int:
        """Spool up to 256 held records (small batches keep acks and heartbeats flowing); how many, or -1
        if the spool could not be written (they stay held, in order, and spooling pauses)."""
        batch: list[tuple[int, list]] = []
        first_seq, last_episode, retractions = dict(self._first_seq), self._last_episode, 0
        try:
            for rec in itertools.islice(held, 256):
                seq = spool.next_seq
                if isinstance(rec, Retraction):  # its records are those from the episode's first one on
                    since = first_seq.get(rec.episode_id, seq)
                    message = retract_message(self.robot_id, seq, spool.stream, rec.episode_id, since, rec.run)
                    retractions += 1
                else:
                    if rec.episode_id != last_episode or rec.episode_id not in first_seq:
                        first_seq.pop(rec.episode_id, None)
                        first_seq[rec.episode_id] = seq
                        last_episode = rec.episode_id
                    message = record_to_message(rec, seq, spool.stream, self.source)
                frames = encode(message)
                spool.append(seq, pack_frames(frames))
                batch.append((seq, frames))
            spool.sync(False)
        except OSError as exc:
            spool.rollback()
            self._spool_error(exc)
            return -1
        while len(first_seq) > FIRST_SEQS_KEPT:
            first_seq.pop(next(iter(first_seq)))
        self._first_seq, self._last_episode = first_seq, last_episode
        self.stats.retractions += retractions
        for _ in batch:
            held.popleft()
        if cache is not None:
            for seq, frames in batch:
                if seq < spool.acked + 1 + window:
                    cache[seq] = frames
        if self.stats.spool_paused:
            self.stats.spool_paused = False
            log.warning("experience link %s: the spool takes writes again; %d held records spooled", self.robot_id,
                        len(batch))
        return len(batch)

    def _spool_error(self, exc: OSError) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text not in self.stats.spool_errors and len(self.stats.spool_errors) < 5:
            self.stats.spool_errors.append(text)
        if not self.stats.spool_paused:
            self.stats.spool_paused = True
            self.stats.spool_pauses += 1
            log.error("experience link %s: the spool %s cannot be written (%s): spooling paused, records wait in "
                      "memory (the robot keeps running); retrying every %.1f s", self.robot_id,
                      self.config.spool_path(), exc, SPOOL_RETRY_S)

    def _count_malformed(self, reason: str) -> None:
        self.stats.malformed += 1
        self.stats.malformed_reasons[reason] = self.stats.malformed_reasons.get(reason, 0) + 1
