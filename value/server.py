"""The learner's end of the links: one I/O thread owns the experience ROUTER and the weights PUB.

Experience: each ``chunk`` message is checked against its stream's last stored seq (duplicates are
dropped, a gap is refused), stored in the :class:`~tandem.value.replay.ReplayStore`, and, once a
batch of them is committed (fsync), acked with the highest seq stored for the stream. Heartbeats are
answered with the learner's incarnation id and that same seq, which is how a reconnecting robot
learns where to resume. A ``retract`` message (a re-recorded episode) takes the same path: sequenced,
stored (the replay drops the episode's records) and acked. ``pull`` requests get pieces of the latest packed weights; ``report``
messages (weights refused or staged by a robot) are counted per robot.

Weights: :meth:`LinkServer.publish` (any thread) encodes and hashes the set on the caller's thread,
then hands it to the I/O thread, which publishes it inline, or, above ``inline_max_bytes``, as an
announcement that robots pull in pieces. A heartbeat on the PUB carries the latest version per kind
and the learner's progress (``step``: updates made; ``training``: its replay holds enough records to
train), which a robot pacing itself on the learner (``link.learner_updates_per_episode``) waits on.

Malformed messages of any sort are counted by reason and dropped; nothing a peer sends is fatal:
each message is handled under its own guard, and anything it raises (other than a storage error) is
counted as ``receiver_error`` and the loop goes on.

Per-robot state is bounded: robots that never had a record stored are kept in an LRU of
``max_unverified_robots`` (the oldest evicted first, counted in ``evicted_robots``), all robots in one of
``max_robots``. With CURVE, a robot id is bound to the client key it was first seen with; a message
naming that robot from another key is refused (``robot_key_mismatch``). Robot ids and reasons a peer
chose are logged through :func:`~tandem.protocol.wire.log_safe` (no newlines or control characters).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from tandem.protocol.messages import (
    ACK,
    CHUNK,
    HB,
    PIECE,
    PULL,
    RECORD_SCHEMA,
    REPORT,
    RETRACT,
    WEIGHT_KINDS,
    announcement,
    weights_message,
)
from tandem.protocol.security import (
    bound_endpoint,
    check_endpoint,
    load_keys,
    open_socket,
    start_authenticator,
    tcp_endpoint,
)
from tandem.protocol.wire import Message, WireError, decode, encode, log_safe, pack_frames
from tandem.value.replay import DUPLICATE, GAP, REJECTED, ReplayStore

log = logging.getLogger(__name__)

MAX_ROBOT_ID_CHARS = 128
MAX_STREAMS_PER_ROBOT = 64
USER_ID = "User-Id"  # the ZAP user id of a CURVE peer: its public key (z85)


@dataclass
class ServerConfig:
    """Socket settings of the learner (a subset of LearnerConfig).

    Attributes:
        host: address to bind; anything but loopback needs ``keys_dir``.
        experience_port, weights_port: ports to bind (0: any free port).
        keys_dir: CURVE keys from ``tandem keys`` (empty: plain, loopback only).
        max_message_bytes: zmq.MAXMSGSIZE of every socket and the largest message accepted.
        heartbeat_s: seconds between heartbeats on the PUB.
        robot_timeout_s: a robot silent this long is shown as not live.
        inline_max_bytes: weights larger than this are announced and pulled in pieces.
        piece_bytes: size of one piece.
        pub_hwm: weights messages queued per subscriber before the PUB drops (latest-only link).
        max_unverified_robots: robots kept that never had a record stored (heartbeats, pulls, reports
            only); the least recently heard is evicted beyond this.
        max_robots: robots kept in all; beyond this the least recently heard unverified robot, or if
            there is none the least recently heard robot, is evicted.
    """

    host: str = "127.0.0.1"
    experience_port: int = 5560
    weights_port: int = 5561
    keys_dir: str = ""
    max_message_bytes: int = 64 * 1024 * 1024
    heartbeat_s: float = 0.2
    robot_timeout_s: float = 2.0
    inline_max_bytes: int = 8 * 1024 * 1024
    piece_bytes: int = 1024 * 1024
    pub_hwm: int = 16
    max_unverified_robots: int = 1024
    max_robots: int = 4096


@dataclass
class RobotState:
    """What the learner knows about one robot.

    ``verified``: a record of it was stored (or recognised as a duplicate of a stored one).
    ``key``: with CURVE, the client public key (z85) it was first seen with; "" on plain links.
    """

    robot_id: str
    verified: bool = False
    key: str = ""
    last_seen: float = 0.0
    stored: int = 0
    duplicates: int = 0
    gaps: int = 0
    rejected: int = 0
    streams: set[str] = field(default_factory=set)
    weights_staged: dict[str, int] = field(default_factory=dict)
    weights_refused: dict[str, int] = field(default_factory=dict)


@dataclass
class _Published:
    wkind: str
    version: int
    run: str
    frames: list[Any]
    blob: bytes
    count: int
    t_publish: float


class LinkServer:
    """The learner's sockets and their I/O thread.

    Args:
        config: ServerConfig.
        store: where records go (None: records are refused, e.g. a publish-only benchmark).
        context: zmq context to share.
    """

    def __init__(self, config: ServerConfig, store: ReplayStore | None, context: zmq.Context | None = None) -> None:
        self.config = config
        self.store = store
        self.incarnation = uuid.uuid4().hex[:12]
        self.robots: OrderedDict[str, RobotState] = OrderedDict()  # least recently heard first
        self._unverified: OrderedDict[str, None] = OrderedDict()  # the unverified ones, same order
        self.stats: dict[str, Any] = {
            "received": 0, "stored": 0, "duplicates": 0, "gaps": 0, "rejected": 0, "malformed": 0,
            "malformed_reasons": {}, "rejected_reasons": {}, "acks": 0, "published": 0, "pulls": 0,
            "pieces_sent": 0, "disconnects": 0, "reports": 0, "evicted_robots": 0, "io_error": "",
        }
        self.versions: dict[str, tuple[str, int]] = {}
        self.progress: dict[str, Any] = {"step": 0, "training": False}  # set by the learner's loop
        self.experience_endpoint = ""
        self.weights_endpoint = ""
        self._context = context or zmq.Context.instance()
        self._outbox: queue.SimpleQueue[_Published] = queue.SimpleQueue()
        self._latest: dict[str, _Published] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_lock = threading.Lock()
        self._auth = None
        self._sockets: dict[str, zmq.Socket] = {}
        self.check_config(config)  # refuse a bad endpoint now, before anything is created or bound

    @staticmethod
    def check_config(config: ServerConfig) -> None:
        """Raise LinkSecurityError for a non-loopback host without CURVE keys (binds nothing)."""
        for name, port in (("experience", config.experience_port), ("weights", config.weights_port)):
            check_endpoint(tcp_endpoint(config.host, port), config.keys_dir, f"learner.{name} endpoint (host={config.host})")

    # ------------------------------------------------------------------ lifecycle

    def bind(self, retry_s: float = 0.0) -> LinkServer:
        """Bind the sockets (raising on failure). ``retry_s``: keep retrying while a port is busy
        (a hot-standby learner waiting for a dying one to release its ports)."""
        if self._sockets:
            return self
        deadline, warned = time.monotonic() + retry_s, False
        while True:
            try:
                self._bind()
                return self
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() >= deadline:
                    raise
                if not warned:
                    log.info("learner: port busy (%s); retrying for up to %.0f s", exc, retry_s)
                    warned = True
                time.sleep(0.02)

    def _bind(self) -> None:
        cfg = self.config
        if cfg.keys_dir and self._auth is None:
            self._auth = start_authenticator(self._context, load_keys(cfg.keys_dir, "server"))
        common = dict(bind=True, max_message_bytes=cfg.max_message_bytes, keys_dir=cfg.keys_dir)
        try:
            router = open_socket(
                self._context, zmq.ROUTER, tcp_endpoint(cfg.host, cfg.experience_port), field="learner.experience endpoint",
                options={zmq.ROUTER_MANDATORY: 0, zmq.RCVHWM: 100_000, zmq.SNDHWM: 100_000}, **common,
            )
            self._sockets["router"] = router
            pub = open_socket(
                self._context, zmq.PUB, tcp_endpoint(cfg.host, cfg.weights_port), field="learner.weights endpoint",
                options={zmq.SNDHWM: cfg.pub_hwm}, **common,
            )
            self._sockets["pub"] = pub
            wake_name = f"inproc://tandem-learner-wake-{self.incarnation}"
            for name, kind in (("wake_rx", zmq.PULL), ("wake_tx", zmq.PUSH)):
                self._sockets[name] = self._context.socket(kind)  # kept before bind/connect: closed if they fail
                self._sockets[name].setsockopt(zmq.LINGER, 0)
            self._sockets["wake_rx"].bind(wake_name)
            self._sockets["wake_tx"].connect(wake_name)
            self._sockets["monitor"] = router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        except Exception:
            self._close_sockets()
            raise
        self.experience_endpoint = bound_endpoint(router)
        self.weights_endpoint = bound_endpoint(pub)

    def start(self) -> LinkServer:
        """Bind (if :meth:`bind` was not called) and start the I/O thread."""
        self.bind()
        self._thread = threading.Thread(target=self._run, name="learner-links", daemon=True)
        self._thread.start()
        log.info("learner links: experience %s, weights %s", self.experience_endpoint, self.weights_endpoint)
        return self

    def stop(self) -> None:
        """Stop the I/O thread and close the sockets."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        self._close_sockets()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def _close_sockets(self) -> None:
        router = self._sockets.get("router")
        if router is not None and "monitor" in self._sockets:
            try:
                router.disable_monitor()
            except zmq.ZMQError:
                pass
        for sock in self._sockets.values():
            sock.close(0)
        self._sockets.clear()

    @property
    def experience_port(self) -> int:
        """The bound experience port."""
        return int(self.experience_endpoint.rsplit(":", 1)[1])

    @property
    def weights_port(self) -> int:
        """The bound weights port."""
        return int(self.weights_endpoint.rsplit(":", 1)[1])

    # ------------------------------------------------------------------ any thread

    def publish(self, wkind: str, arrays: dict[str, np.ndarray], version: int, run: str) -> None:
        """Publish a weight set (encoding and hashing happen on the calling thread)."""
        msg = weights_message(wkind, arrays, version, run)
        frames = encode(msg)
        nbytes = msg.meta["nbytes"]
        blob, count = b"", 0
        if nbytes > self.config.inline_max_bytes:
            blob = pack_frames(frames)
            count = -(-len(blob) // self.config.piece_bytes)
            frames = encode(announcement(msg, count, len(blob)))
        self._outbox.put(_Published(wkind, int(version), run, frames, blob, count, time.perf_counter()))
        self._wake()

    def _wake(self) -> None:
        sock = self._sockets.get("wake_tx")
        if sock is None:
            return
        with self._wake_lock:
            try:
                sock.send(b"", flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def live_robots(self) -> list[str]:
        """Robots heard from within ``robot_timeout_s``."""
        now = time.monotonic()
        return sorted(r for r, s in list(self.robots.items()) if now - s.last_seen < self.config.robot_timeout_s)

    def robots_status(self) -> dict[str, dict]:
        """Per robot: live, seconds since last heard, records stored, duplicates, weights staged/refused."""
        now = time.monotonic()
        out = {}
        for rid, s in list(self.robots.items()):
            out[rid] = {
                "live": now - s.last_seen < self.config.robot_timeout_s,
                "last_seen_s": round(now - s.last_seen, 3),
                "stored": s.stored,
                "duplicates": s.duplicates,
                "gaps": s.gaps,
                "rejected": s.rejected,
                "streams": len(s.streams),
                "weights_staged": dict(s.weights_staged),
                "weights_refused": dict(s.weights_refused),
            }
        return out

    # ------------------------------------------------------------------ I/O thread

    def _run(self) -> None:
        router, pub = self._sockets["router"], self._sockets["pub"]
        wake_rx, monitor = self._sockets["wake_rx"], self._sockets["monitor"]
        poller = zmq.Poller()
        for s in (router, wake_rx, monitor):
            poller.register(s, zmq.POLLIN)
        last_hb = 0.0
        try:
            while not self._stop.is_set():
                timeout = max(0.0, self.config.heartbeat_s - (time.monotonic() - last_hb))
                events = dict(poller.poll(int(timeout * 1000) + 1))
                if wake_rx in events:
                    while True:
                        try:
                            wake_rx.recv(flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                self._publish_pending(pub)
                if router in events:
                    self._serve_router(router)
                if monitor in events:
                    while monitor.poll(0):
                        recv_monitor_message(monitor)
                        self.stats["disconnects"] += 1
                if time.monotonic() - last_hb >= self.config.heartbeat_s:
                    versions = {k: [run, v] for k, (run, v) in self.versions.items()}
                    hb = Message(kind=HB, meta={"learner": self.incarnation, "versions": versions, **self.progress})
                    try:
                        pub.send_multipart(encode(hb), flags=zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                    last_hb = time.monotonic()
        except Exception as exc:  # a storage error: the status shows it (robots keep their records)
            self.stats["io_error"] = log_safe(f"{type(exc).__name__}: {exc}", 300)
            log.exception("learner link I/O thread failed")
        finally:
            if self.store is not None:
                self.store.commit()

    def _publish_pending(self, pub: zmq.Socket) -> None:
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._latest[item.wkind] = item
            self.versions[item.wkind] = (item.run, item.version)
            try:
                pub.send_multipart(item.frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                pass
            self.stats["published"] += 1

    def _count(self, key: str, reason: str) -> None:
        self.stats[key] += 1
        reasons = self.stats[f"{key}_reasons"]
        reasons[reason] = reasons.get(reason, 0) + 1

    def _robot(self, robot_id: str, key: str = "") -> RobotState:
        """The state of ``robot_id`` (created, and the oldest evicted, if new); marks it heard.

        Raises:
            WireError: "robot_key_mismatch" when ``robot_id`` was first seen with another CURVE key.
        """
        state = self.robots.get(robot_id)
        if state is None:
            self._evict()
            state = self.robots[robot_id] = RobotState(robot_id, key=key)
            self._unverified[robot_id] = None
            log.debug("learner: robot %s heard", log_safe(robot_id))
        elif state.key != key:
            raise WireError("robot_key_mismatch", f"robot {log_safe(robot_id)} is bound to another client key")
        state.last_seen = time.monotonic()
        self.robots.move_to_end(robot_id)
        if not state.verified:
            self._unverified.move_to_end(robot_id)
        return state

    def _verify(self, state: RobotState) -> None:
        """``state``'s robot had a record stored: it leaves the unverified LRU."""
        if not state.verified:
            state.verified = True
            self._unverified.pop(state.robot_id, None)
            log.info("learner: robot %s connected", log_safe(state.robot_id))

    def _evict(self) -> None:
        """Make room for one more robot: the least recently heard unverified one goes first."""
        cfg = self.config
        victim = None
        if len(self._unverified) >= cfg.max_unverified_robots:
            victim = next(iter(self._unverified))
        elif len(self.robots) >= cfg.max_robots:
            victim = next(iter(self._unverified)) if self._unverified else next(iter(self.robots))
        if victim is not None:
            del self.robots[victim]
            self._unverified.pop(victim, None)
            self.stats["evicted_robots"] += 1
            if self.stats["evicted_robots"] in (1, 10, 100, 1000) or self.stats["evicted_robots"] % 10_000 == 0:
                log.warning("learner: %d robot states evicted (more than %d robots without a stored record); "
                            "a peer may be sending under many robot ids", self.stats["evicted_robots"],
                            cfg.max_unverified_robots)

    @staticmethod
    def _add_stream(state: RobotState, stream: str) -> None:
        """Remember ``stream`` (the newest MAX_STREAMS_PER_ROBOT are kept)."""
        if stream not in state.streams and len(state.streams) >= MAX_STREAMS_PER_ROBOT:
            state.streams.pop()
        state.streams.add(stream)

    def _peer_key(self, frame: Any) -> str:
        """The CURVE client key (z85) a message came with; "" on plain links."""
        if not self.config.keys_dir:
            return ""
        try:
            return str(frame.get(USER_ID))
        except (zmq.ZMQError, AttributeError, TypeError, ValueError):
            return "?"

    def _serve_router(self, router: zmq.Socket) -> None:
        acks: dict[tuple[str, str], tuple[bytes, bool]] = {}
        replies: list[list] = []
        for _ in range(1024):  # one fsync per batch; small enough to keep heartbeats prompt
            try:
                frames = router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self.stats["received"] += 1
            try:
                self._on_message(frames, acks, replies)
            except WireError as exc:
                self._count("malformed", exc.reason)
            except OSError:
                raise  # storage: not a peer's doing
            except Exception as exc:  # a message no check foresaw: counted, never fatal
                self._count("malformed", "receiver_error")
                if self.stats["malformed_reasons"]["receiver_error"] <= 10:
                    log.warning("learner: dropped a message that failed in its handler (%s)",
                                log_safe(f"{type(exc).__name__}: {exc}", 200))
        if acks and self.store is not None:
            self.store.commit()  # durable before any ack leaves
        for (robot, stream), (ident, gap) in acks.items():
            acked = self.store.last_seq(robot, stream)
            ack = Message(kind=ACK, robot=robot, meta={"learner": self.incarnation, "stream": stream, "acked": acked, "gap": gap})
            replies.append([ident, *encode(ack)])
            self.stats["acks"] += 1
        for reply in replies:
            try:
                router.send_multipart(reply, flags=zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:  # peer gone or its queue full: it will ask again
                pass

    def _on_message(self, frames: list[Any], acks: dict, replies: list[list]) -> None:
        """Handle one message from the ROUTER (``frames``: identity, then the wire frames).

        Raises:
            WireError: the message is malformed or refused (the caller counts the reason).
        """
        if len(frames) < 2:
            raise WireError("empty")
        ident, body = frames[0].bytes, frames[1:]
        msg = decode(body, self.config.max_message_bytes)
        if not msg.robot:
            raise WireError("bad_header", "no robot id")
        if len(msg.robot) > MAX_ROBOT_ID_CHARS:
            raise WireError("bad_robot_id", f"robot id of {len(msg.robot)} characters")
        key = self._peer_key(body[0])
        if msg.kind in (CHUNK, RETRACT):  # a retraction is sequenced, stored and acked like a record
            self._on_chunk(ident, msg, acks, key)
        elif msg.kind == HB:
            stream = msg.meta.get("stream")
            if not isinstance(stream, str):
                raise WireError("bad_meta", "stream")
            self._add_stream(self._robot(msg.robot, key), stream)
            acked = self.store.last_seq(msg.robot, stream) if self.store is not None else 0
            reply = Message(kind=HB, robot=msg.robot, meta={"learner": self.incarnation, "stream": stream, "acked": acked})
            replies.append([ident, *encode(reply)])
        elif msg.kind == PULL:
            self._robot(msg.robot, key)
            reply = self._piece(msg)
            if reply is not None:
                replies.append([ident, *reply])
        elif msg.kind == REPORT:
            self._on_report(msg, key)
        else:
            raise WireError("unexpected_kind", log_safe(msg.kind, 40))

    def _on_chunk(self, ident: bytes, msg: Message, acks: dict, key: str = "") -> None:
        stream = msg.meta.get("stream")
        if not isinstance(stream, str) or not stream or self.store is None:
            self._count("malformed", "bad_meta" if self.store is not None else "no_store")
            return
        if msg.schema != RECORD_SCHEMA:  # another protocol version: not acked, the robot keeps it spooled
            self._count("malformed", "wrong_schema")
            return
        try:
            robot = self._robot(msg.robot, key)
        except WireError:
            if self.stats["malformed_reasons"].get("robot_key_mismatch", 0) < 10:
                log.warning("learner: refused a record of robot %s: it came with another client key than the "
                            "robot's first (robot ids are bound to CURVE keys)", log_safe(msg.robot))
            raise
        self._add_stream(robot, stream)
        verdict = self.store.offer(msg)
        ack_key = (msg.robot, stream)
        gap = acks.get(ack_key, (b"", False))[1]
        if verdict == DUPLICATE:
            robot.duplicates += 1
            self.stats["duplicates"] += 1
        elif verdict == GAP:
            robot.gaps += 1
            self.stats["gaps"] += 1
            gap = True
        elif verdict == REJECTED:
            robot.rejected += 1
            self.stats["rejected"] += 1
            reason = self.store.last_reject_reason
            self.stats["rejected_reasons"][reason] = self.stats["rejected_reasons"].get(reason, 0) + 1
        elif msg.kind == RETRACT:
            self.stats["retractions"] = self.stats.get("retractions", 0) + 1
        else:
            robot.stored += 1
            self.stats["stored"] += 1
        if verdict not in (REJECTED, GAP):
            self._verify(robot)
        acks[ack_key] = (ident, gap)

    def _piece(self, msg: Message) -> list | None:
        wkind, index, version = msg.meta.get("wkind"), msg.meta.get("index"), msg.meta.get("version")
        if not isinstance(wkind, str) or not isinstance(index, int) or not isinstance(version, int):
            self._count("malformed", "bad_meta")
            return None
        self.stats["pulls"] += 1
        item = self._latest.get(wkind)
        if item is None:
            return None
        if not item.blob:  # a small set: one piece holding the whole packed message
            item.blob = pack_frames(item.frames)
            item.count = -(-len(item.blob) // self.config.piece_bytes)
        if version != item.version or not 0 <= index < item.count:
            index = 0
        size = self.config.piece_bytes
        data = np.frombuffer(item.blob, np.uint8)[index * size : (index + 1) * size]
        meta = {"wkind": wkind, "version": item.version, "run": item.run, "index": index, "count": item.count, "blob_bytes": len(item.blob)}
        self.stats["pieces_sent"] += 1
        return encode(Message(kind=PIECE, robot=msg.robot, meta=meta, arrays={"data": data}))

    def _on_report(self, msg: Message, key: str = "") -> None:
        wkind, version, status = msg.meta.get("wkind"), msg.meta.get("version"), msg.meta.get("status")
        if wkind not in WEIGHT_KINDS or not isinstance(version, int) or isinstance(version, bool):
            self._count("malformed", "bad_meta")
            return
        robot = self._robot(msg.robot, key)
        self.stats["reports"] += 1
        if status == "staged":
            robot.weights_staged[wkind] = version
        elif status == "refused":
            robot.weights_refused[wkind] = robot.weights_refused.get(wkind, 0) + 1
            log.warning("learner: robot %s refused %s v%s (%s)", log_safe(msg.robot), wkind, version,
                        log_safe(msg.meta.get("reason"), 200))
