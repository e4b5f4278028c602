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
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, field

import zmq

from tandem.protocol.chunk_record import ChunkRecord
from tandem.protocol.messages import ACK, HB, record_to_message
from tandem.protocol.security import open_socket
from tandem.protocol.wire import Message, WireError, decode, encode, pack_frames, unpack_frames
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.spool import RecordSpool

log = logging.getLogger(__name__)


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
        self._queue: queue.SimpleQueue[ChunkRecord] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()
        self.stream = ""

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
        return self._queue.empty() and self.stats.spooled >= self.stats.queued and self.stats.pending == 0

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
        try:
            self._loop(spool, sock)
        except Exception:
            log.exception("experience link %s: I/O thread failed", self.robot_id)
        finally:
            sock.close(0)
            spool.close()

    def _loop(self, spool: RecordSpool, sock: zmq.Socket) -> None:
        cfg = self.config
        cache: dict[int, list] = {}
        next_send = spool.acked + 1
        connected, learner_id, last_heard, rewound_at = False, None, 0.0, -1
        last_hb, last_fsync, last_persist = 0.0, 0.0, time.monotonic()
        socket_born = time.monotonic()
        # the highest seq that may have reached a learner: what this link sent, or anything an earlier
        # session on this spool spooled (and may have sent); an ack above it is refused, so a peer
        # answering as the learner cannot make the robot forget records it never sent
        sent_max = spool.next_seq - 1
        while not self._stop.is_set():
            now = time.monotonic()
            # 1. spool new records (seq assigned here)
            n_new = 0
            while n_new < 256:  # small batches keep acks and heartbeats flowing
                try:
                    rec = self._queue.get_nowait()
                except queue.Empty:
                    break
                seq = spool.next_seq
                frames = encode(record_to_message(rec, seq, spool.stream, self.source))
                spool.append(seq, pack_frames(frames))
                if connected and seq < spool.acked + 1 + cfg.window:
                    cache[seq] = frames
                n_new += 1
            if n_new:
                self.stats.pending = spool.pending  # before spooled: readers check spooled, then pending
                self.stats.spooled += n_new
                fsync = now - last_fsync >= cfg.spool_fsync_s
                spool.sync(fsync)
                if fsync:
                    last_fsync = now
            # 2. send within the window
            if connected:
                while next_send < spool.next_seq and next_send <= spool.acked + cfg.window:
                    frames = cache.pop(next_send, None)
                    if frames is None:
                        payload = spool.read(next_send)
                        if payload is None:  # acked meanwhile
                            next_send += 1
                            continue
                        frames = unpack_frames(payload)
                        self.stats.resent += 1
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
            busy = n_new or (connected and next_send < spool.next_seq and next_send <= spool.acked + cfg.window)
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
                sock = self._socket()
                socket_born = now
                self.stats.reconnects += int(connected)
                connected = False
                cache.clear()
                next_send = spool.acked + 1
            if now - last_persist > 0.5:
                spool.persist()
                last_persist = now
            self.stats.acked = spool.acked
            self.stats.pending = spool.pending
            self.stats.connected = connected
            self.stats.last_heard_s = round(now - last_heard, 3) if last_heard else -1.0
        spool.sync(True)
        self.stats.acked = spool.acked
        self.stats.pending = spool.pending

    def _count_malformed(self, reason: str) -> None:
        self.stats.malformed += 1
        self.stats.malformed_reasons[reason] = self.stats.malformed_reasons.get(reason, 0) + 1
