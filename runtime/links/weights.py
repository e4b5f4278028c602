"""Weights link, robot side: receive, check and stage new weights; the loop swaps them at a chunk edge.

The subscriber's thread owns a SUB socket on the learner's weights PUB (latest only) and a DEALER on
the learner's ROUTER for pulling large weights in pieces. Everything is checked on that thread: the
header's schema hash against the consumer's :meth:`WeightsConsumer.weights_schema`, the digest of the
arrays (:func:`tandem.protocol.wire.fold_digest`), finiteness of every float array. A set that passes is prepared (by the consumer, still off
the control thread) and staged; :meth:`WeightsSubscriber.apply_staged`, registered in
``Controller.boundary_callbacks``, hands it over at the next chunk boundary: a reference swap.
A refused set is counted, logged and reported to the learner; the robot keeps its current weights.
Each message is handled under its own guard: whatever a peer sends, the thread counts it
(``malformed_reasons``, ``receiver_error`` for a failure no check foresaw) and goes on.

The learner's heartbeat (on the PUB) carries the latest version of each kind, so a robot that missed
a publication (slow joiner, dropped by the PUB's high-water mark, reconnected) pulls it.

Base weights (kind ``base``, :class:`BaseWeights`) are swapped at an *episode* boundary instead: the
consumer stages them in the policy (the worker process or ``tandem serve-policy``, over the policy
link; or the in-process policy) while they are checked, and :meth:`WeightsSubscriber.apply_episode`,
called when an episode starts (``Controller.episode_callbacks``, before its first chunk is asked for),
activates them. A set the policy refuses, at staging or at activation, is counted, reported to the
learner, and the robot keeps its current base.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from tandem.protocol.messages import (
    HB,
    PIECE,
    PULL,
    REPORT,
    WEIGHTS,
    check_arrays,
    check_weights_message,
    verify_digest,
    weights_header,
    weights_schema_hash,
)
from tandem.protocol.security import open_socket
from tandem.protocol.wire import (
    MAX_ARRAYS,
    MAX_HEADER_BYTES,
    Message,
    WireError,
    decode,
    digest_arrays,
    encode,
    fold_digest,
    log_safe,
    schema_hash,
    unpack_frames,
)
from tandem.runtime.links.config import LinkConfig

log = logging.getLogger(__name__)

WeightsSpec = dict[str, tuple[str, tuple[int, ...]]]
HASH_ASIDE_BYTES = 256 * 1024  # weight sets above this are hashed beside the consumer's preparation


def latest_only(messages: list[Message]) -> list[Message]:
    """Drop every ``weights`` message followed by a newer one of the same kind (a backlog after a
    stall is not validated set by set); heartbeats and everything else are kept, in order."""
    last: dict[str, int] = {}
    for i, msg in enumerate(messages):
        if msg.kind == WEIGHTS and isinstance(msg.meta.get("wkind"), str):
            last[msg.meta["wkind"]] = i
    return [m for i, m in enumerate(messages)
            if not (m.kind == WEIGHTS and isinstance(m.meta.get("wkind"), str) and last[m.meta["wkind"]] != i)]


class WeightsConsumer(Protocol):
    """Something on the robot that runs on pushed weights (a head, a critic, the base policy)."""

    def weights_schema(self) -> WeightsSpec:
        """name -> (dtype, shape) of the arrays it accepts (the learner's schema hash must match)."""

    def prepare_weights(self, arrays: dict[str, np.ndarray], version: int) -> Any:
        """Build what :meth:`load_weights` will swap in. Runs off the control thread; may be slow."""

    def load_weights(self, prepared: Any, version: int) -> None:
        """Swap ``prepared`` in. Runs on the control thread at a chunk boundary: a reference swap."""

    # optional: ``release_weights(prepared)``, called with a prepared set that will never be loaded
    # (a newer set replaced it while staged, or its digest failed), so its memory can be reused


class ModuleWeights:
    """WeightsConsumer for a module with ``schema()`` / ``load_weights(arrays, version)`` (heads, critic).

    ``prepare_weights`` validates and copies off the control thread; ``load_weights`` copies the arrays
    into the module at a chunk boundary (a few hundred microseconds for the default sizes), then calls
    ``on_load`` if given.
    """

    def __init__(self, module: Any, on_load: Callable[[], None] | None = None) -> None:
        self.module = module
        self.on_load = on_load

    @property
    def version(self) -> int:
        """The module's weights version (0: never loaded)."""
        return int(getattr(self.module, "version", 0))

    def weights_schema(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> (dtype, shape) of the module's weights."""
        return {k: (d, tuple(s)) for k, (d, s) in self.module.schema()["params"].items()}

    def prepare_weights(self, arrays: dict[str, np.ndarray], version: int) -> dict[str, np.ndarray]:
        """Validated float32 copies."""
        check_arrays(self.module.schema()["params"], arrays)
        return {k: np.array(v, np.float32) for k, v in arrays.items()}

    def load_weights(self, prepared: dict[str, np.ndarray], version: int) -> None:
        """Install into the module."""
        self.module.load_weights(prepared, version)
        if self.on_load is not None:
            self.on_load()


class TorchModuleWeights:
    """A WeightsConsumer around a torch module, double-buffered: a new set is copied into the tensors of
    a spare copy of the module off the control thread, and the swap at a chunk boundary is a reference
    swap. The module swapped out becomes the spare the next set is copied into, so no module is built
    per set (one ``deepcopy`` when the first set arrives, and one more only while a set waits staged).

    Args:
        module: the module in use; its ``state_dict`` defines the schema.

    Read :attr:`module` at the point of use and keep no reference to it past a chunk boundary: the
    module replaced at a swap is overwritten by a later set.
    """

    def __init__(self, module: Any) -> None:
        self.module = module
        self.version = 0
        self._spares: list[Any] = []
        self._lock = threading.Lock()  # spares are returned on the control thread, taken on the weights thread

    def weights_schema(self) -> WeightsSpec:
        """Names, dtypes and shapes of the module's state_dict."""
        return {k: (str(v.detach().cpu().numpy().dtype), tuple(v.shape)) for k, v in self.module.state_dict().items()}

    def prepare_weights(self, arrays: dict[str, np.ndarray], version: int) -> Any:
        """A spare copy of the module holding the new weights (torch imported here, off the control thread).

        Raises:
            ValueError: the arrays' names, dtypes or shapes differ from the module's state_dict.
        """
        import torch

        with self._lock:
            spare = self._spares.pop() if self._spares else None
        if spare is None:
            spare = copy.deepcopy(self.module)
        try:
            state = spare.state_dict()
            if set(state) != set(arrays):
                raise ValueError(f"tandem: weights names differ from the module's: {sorted(set(state) ^ set(arrays))[:5]}")
            with torch.no_grad():
                for name, tensor in state.items():
                    src = arrays[name]
                    if tensor.device.type == "cpu" and tensor.is_contiguous():
                        np.copyto(tensor.numpy(), src, casting="no")  # the schema hash matched: one memcpy
                    else:
                        tensor.copy_(torch.from_numpy(np.array(src)))
        except Exception:
            self.release_weights(spare)
            raise
        spare.train(self.module.training)
        return spare

    def load_weights(self, prepared: Any, version: int) -> None:
        """Swap the module reference; the module swapped out becomes a spare."""
        previous = self.module
        self.module, self.version = prepared, version
        self.release_weights(previous)

    def release_weights(self, prepared: Any) -> None:
        """Take back a copy of the module that is not in use (swapped out, replaced while staged, refused)."""
        with self._lock:
            if len(self._spares) < 2:
                self._spares.append(prepared)


# the policy link's kinds and schema (tandem.runtime.inference.server), repeated here so the weights
# link does not import the inference package; tests/runtime/links/test_base_weights.py checks they agree
POLICY_STAGE, POLICY_ACTIVATE, POLICY_STAGED, POLICY_ERROR = "stage", "activate", "staged", "error"
POLICY_LINK_SCHEMA = schema_hash({"link": "policy", "kinds": ["infer", "chunk", "error", "info", "stage", "activate",
                                                              "staged"], "v": 2})


class LocalBase:
    """Where base weights go when the policy runs in this process (``session.backend`` inline or thread)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def stage(self, arrays: dict[str, np.ndarray], version: int) -> None:
        """Build the new network beside the running one (raises if the policy refuses the arrays)."""
        self.policy.stage_weights(arrays, version)

    def activate(self, version: int) -> None:
        """Swap it in."""
        self.policy.activate_weights(version)

    def cancel(self) -> None:
        """Nothing waits here."""

    def close(self) -> None:
        """Nothing to release."""


class LinkBase:
    """Where base weights go when the policy runs behind a policy link (worker process, ``tandem
    serve-policy``): ``stage`` and ``activate`` requests on a DEALER socket of its own.

    Args:
        endpoint: the policy server's ROUTER address, or a function returning it (read at each request:
            a restarted worker listens on a new port).
        keys_dir: CURVE keys of the policy link ("" on loopback).
        max_message_bytes: the policy link's size limit.
        stage_timeout_s, activate_timeout_s: how long to wait for the server's answer.
    """

    def __init__(self, endpoint: str | Callable[[], str], keys_dir: str = "", max_message_bytes: int = 64 * 1024 * 1024,
                 stage_timeout_s: float = 60.0, activate_timeout_s: float = 10.0) -> None:
        self.endpoint = endpoint
        self.keys_dir = keys_dir
        self.max_message_bytes = max_message_bytes
        self.stage_timeout_s = stage_timeout_s
        self.activate_timeout_s = activate_timeout_s
        self._lock = threading.Lock()  # staging (weights thread) and activation (control thread) share the socket
        self._sock: zmq.Socket | None = None
        self._connected = ""
        self._seq = 0
        self._cancel = threading.Event()  # set by cancel(): a request in progress gives up at once

    def _socket(self) -> zmq.Socket:
        endpoint = self.endpoint() if callable(self.endpoint) else self.endpoint
        if self._sock is not None and endpoint != self._connected:
            self._sock.close(0)
            self._sock = None
        if self._sock is None:
            self._connected = endpoint
            # the process's shared context (never terminated here): a private one finalized by the garbage
            # collector before its socket (an owner never closed) would block forever in zmq_ctx_term
            self._sock = open_socket(zmq.Context.instance(), zmq.DEALER, endpoint, bind=False,
                                     max_message_bytes=self.max_message_bytes, keys_dir=self.keys_dir,
                                     field="policy_link.endpoint")
        return self._sock

    def _request(self, kind: str, meta: dict[str, Any], arrays: dict[str, np.ndarray], timeout_s: float) -> None:
        """Send one request and wait for its answer.

        Raises:
            RuntimeError: the server refused (its reason), or did not answer within ``timeout_s``.
        """
        with self._lock:
            sock = self._socket()
            self._seq += 1
            seq = self._seq
            sock.send_multipart(encode(Message(kind=kind, schema=POLICY_LINK_SCHEMA, seq=seq, meta=meta, arrays=arrays)))
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                if self._cancel.is_set():
                    raise RuntimeError("cancelled: the session is closing")
                if not sock.poll(min(int(left * 1000) + 1, 100)):
                    continue
                try:
                    reply = decode(sock.recv_multipart(), self.max_message_bytes)
                except WireError:
                    continue
                if reply.seq != seq or reply.schema != POLICY_LINK_SCHEMA:
                    continue  # the answer to an earlier request that timed out
                if reply.kind == POLICY_STAGED:
                    return
                raise RuntimeError(f"the policy refused base weights: {log_safe(reply.meta.get('error'), 300)}")
            raise RuntimeError(f"no answer from the policy at {self._connected} within {timeout_s} s ({kind})")

    def stage(self, arrays: dict[str, np.ndarray], version: int) -> None:
        """Send the arrays; the server builds and checks the network beside the running one."""
        self._request(POLICY_STAGE, {"version": int(version), "sha256": digest_arrays(arrays)}, arrays,
                      self.stage_timeout_s)

    def activate(self, version: int) -> None:
        """Ask the server to swap the staged ``version`` in; returns once it has."""
        self._request(POLICY_ACTIVATE, {"version": int(version)}, {}, self.activate_timeout_s)

    def cancel(self) -> None:
        """Make a request in progress (and every later one) give up: the session is closing."""
        self._cancel.set()

    def close(self) -> None:
        """Close the socket (linger 0)."""
        self._cancel.set()
        with self._lock:
            if self._sock is not None:
                self._sock.close(0)
            self._sock = None


class BaseWeights:
    """The WeightsConsumer of kind ``base``: new weights of the base policy, swapped at an episode boundary.

    ``prepare_weights`` (weights thread) checks the arrays against the policy's schema and stages them in
    the policy (``target.stage``: the worker builds a new network beside the running one and checks it
    again); ``load_weights`` (control thread, from :meth:`WeightsSubscriber.apply_episode` when an episode
    starts) activates them. Either raising refuses the set: the robot keeps its current base.

    Args:
        schema: name -> (dtype, shape) of the policy's weights.
        target: :class:`LocalBase` or :class:`LinkBase`.
        version: the base version running now (the checkpoint's).
    """

    at_episode_boundary = True

    def __init__(self, schema: WeightsSpec, target: Any, version: int = 0) -> None:
        self._schema = {k: (str(np.dtype(d)), tuple(int(x) for x in s)) for k, (d, s) in schema.items()}
        self.target = target
        self.version = int(version)

    def weights_schema(self) -> WeightsSpec:
        """name -> (dtype, shape) of the base policy's weights."""
        return dict(self._schema)

    def prepare_weights(self, arrays: dict[str, np.ndarray], version: int) -> int:
        """Check (names, dtypes, shapes, finite) and stage in the policy; returns the version."""
        check_arrays({k: [d, list(s)] for k, (d, s) in self._schema.items()}, arrays)
        self.target.stage(arrays, version)
        return int(version)

    def load_weights(self, prepared: int, version: int) -> None:
        """Activate the staged version in the policy (blocks until the policy has swapped it in)."""
        self.target.activate(version)
        self.version = int(version)

    def cancel(self) -> None:
        """Stop waiting for the policy (the session is closing)."""
        self.target.cancel()

    def close(self) -> None:
        """Release the target's socket, if any."""
        self.target.close()


def base_consumer(policy: Any, backend: Any) -> BaseWeights | None:
    """The ``base`` consumer for a session's policy and inference backend; None when the policy cannot
    take base weights (scripted, lerobot).

    A policy behind a policy link says so in its ``info`` (``weights``: its schema); an in-process policy
    by having ``weights_schema``, ``stage_weights`` and ``activate_weights``.
    """
    info = getattr(backend, "info", None)
    if isinstance(info, dict) and isinstance(getattr(backend, "endpoint", None), str):
        spec = info.get("weights")
        if not isinstance(spec, dict):
            return None
        link = backend.config
        target = LinkBase(lambda: backend.endpoint, link.keys_dir, link.max_message_bytes, stage_timeout_s=link.start_timeout_s)
        return BaseWeights({k: (d, tuple(s)) for k, (d, s) in spec.items()}, target, int(info.get("version", 0)))
    if all(callable(getattr(policy, m, None)) for m in ("weights_schema", "stage_weights", "activate_weights")):
        return BaseWeights(policy.weights_schema(), LocalBase(policy), int(getattr(policy, "version", 0)))
    return None


@dataclass
class WeightsStats:
    """Counters of the weights link (read from any thread)."""

    received: int = 0
    accepted: int = 0
    applied: int = 0
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)
    ignored: int = 0
    pulls: int = 0
    pieces: int = 0
    disconnects: int = 0
    resubscribes: int = 0
    learner_alive: bool = False
    learner_step: int = -1  # the learner's update count from its last heartbeat (-1: not heard)
    learner_training: bool = False  # ... and whether its replay holds enough records to train
    versions: dict[str, int] = field(default_factory=dict)
    applied_versions: dict[str, int] = field(default_factory=dict)
    apply_max_ms: float = 0.0  # the control thread's cost of a swap: wall clock
    apply_cpu_max_ms: float = 0.0  # ... and CPU time of that thread (immune to preemption)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    def learner_progress(self) -> tuple[bool, bool, int]:
        """(alive, training, step) from the learner's latest heartbeat: what ``LearnerPacer`` waits on."""
        return self.learner_alive, self.learner_training, self.learner_step


@dataclass
class _Pull:
    wkind: str
    version: int = -1
    run: str = ""
    count: int = 0
    blob_bytes: int = 0
    pieces: dict[int, bytes] = field(default_factory=dict)
    received_bytes: int = 0
    requested: int = 0
    last_activity: float = 0.0


class WeightsSubscriber:
    """Robot-side weights receiver.

    Args:
        config: the robot's LinkConfig.
        consumers: weight kind ("head", "critic", "base") -> consumer. Other kinds are ignored.
        context: zmq context to share.
        on_staged, on_applied: optional hooks ``(kind, version)`` (metrics, benchmarks); ``on_staged`` runs
            on the weights thread once the set is staged (the control thread may already be swapping it in).
    """

    def __init__(
        self,
        config: LinkConfig,
        consumers: dict[str, WeightsConsumer],
        context: zmq.Context | None = None,
        on_staged: Callable[[str, int], None] | None = None,
        on_applied: Callable[[str, int], None] | None = None,
    ) -> None:
        self.config = config
        self.consumers = dict(consumers)
        self.expected = {k: weights_schema_hash(c.weights_schema()) for k, c in self.consumers.items()}
        self.stats = WeightsStats()
        self.history: dict[str, list[int]] = {k: [] for k in self.consumers}
        self.on_staged = on_staged
        self.on_applied = on_applied
        self._context = context or zmq.Context.instance()
        self._staged: dict[str, tuple[int, Any]] = {}
        self._current: dict[str, tuple[str, int]] = {}
        self._refused: dict[str, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._hash_pool: ThreadPoolExecutor | None = None
        self._episode_kinds = {k for k, c in self.consumers.items() if getattr(c, "at_episode_boundary", False)}
        self._reports: queue.SimpleQueue = queue.SimpleQueue()  # (kind, version, status, reason) from other threads

    # ------------------------------------------------------------------ control thread

    def apply_staged(self, chunk_index: int = 0) -> None:
        """Swap in staged weights (a boundary callback: runs on the control thread, cheap). Kinds swapped
        at episode boundaries (``base``) wait for :meth:`apply_episode`."""
        if not self._staged:
            return
        t0, c0 = time.perf_counter(), time.thread_time()
        for kind in list(self._staged):
            if kind in self._episode_kinds:
                continue
            item = self._staged.pop(kind, None)
            if item is None:
                continue
            version, prepared = item
            self.consumers[kind].load_weights(prepared, version)
            self.stats.applied += 1
            self.stats.applied_versions[kind] = version
            if self.on_applied is not None:
                self.on_applied(kind, version)
        self.stats.apply_max_ms = max(self.stats.apply_max_ms, (time.perf_counter() - t0) * 1e3)
        self.stats.apply_cpu_max_ms = max(self.stats.apply_cpu_max_ms, (time.thread_time() - c0) * 1e3)

    def apply_episode(self) -> None:
        """Activate staged weights of the kinds swapped at episode boundaries (``base``). Runs on the
        control thread when an episode starts, before its first chunk is asked for; may wait for the
        policy to swap (the robot is not commanded then). A failed activation is counted as refused
        (``activate_failed``) and reported to the learner; the current weights stay."""
        for kind in sorted(self._episode_kinds):
            item = self._staged.pop(kind, None)
            if item is None:
                continue
            version, prepared = item
            try:
                self.consumers[kind].load_weights(prepared, version)
            except Exception as exc:
                self._count_rejected("activate_failed")
                log.warning("weights %s: could not activate %s v%d (%s); keeping the current weights",
                            self.config.robot_id, kind, version, log_safe(str(exc), 200))
                self._reports.put((kind, version, "refused", "activate_failed"))
                continue
            self.stats.applied += 1
            self.stats.applied_versions[kind] = version
            if self.on_applied is not None:
                self.on_applied(kind, version)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> WeightsSubscriber:
        """Start the receiver thread (returns self)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"weights-{self.config.robot_id}", daemon=True)
            self._thread.start()
            self._ready.wait(10.0)
            if self._error is not None:
                raise self._error
        return self

    def close(self) -> None:
        """Stop the thread; close the consumers that hold sockets (``base``)."""
        self._stop.set()
        for consumer in self.consumers.values():  # a consumer waiting on its policy gives up
            if callable(getattr(consumer, "cancel", None)):
                consumer.cancel()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        if self._hash_pool is not None:
            self._hash_pool.shutdown(wait=True)
            self._hash_pool = None
        for consumer in self.consumers.values():
            if callable(getattr(consumer, "close", None)):
                consumer.close()

    def _hasher(self) -> ThreadPoolExecutor:
        if self._hash_pool is None:
            self._hash_pool = ThreadPoolExecutor(1, thread_name_prefix=f"weights-hash-{self.config.robot_id}")
        return self._hash_pool

    # ------------------------------------------------------------------ receiver thread

    def _open(self, kind: int) -> zmq.Socket:
        cfg = self.config
        if kind == zmq.SUB:
            sock = open_socket(
                self._context, zmq.SUB, cfg.weights_endpoint, bind=False, max_message_bytes=cfg.max_message_bytes,
                keys_dir=cfg.keys_dir, field="link.weights endpoint", options={zmq.RCVHWM: 8},
            )
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            return sock
        return open_socket(
            self._context, zmq.DEALER, cfg.experience_endpoint, bind=False, max_message_bytes=cfg.max_message_bytes,
            keys_dir=cfg.keys_dir, field="link.experience endpoint",
        )

    def _run(self) -> None:
        cfg = self.config
        try:
            socks = {"sub": self._open(zmq.SUB), "dealer": self._open(zmq.DEALER)}
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        socks["monitor"] = socks["sub"].get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._ready.set()
        pull: _Pull | None = None
        last_heard, sub_born = 0.0, time.monotonic()
        poller = zmq.Poller()
        for s in socks.values():
            poller.register(s, zmq.POLLIN)

        def rebuild(name: str) -> None:
            """A fresh socket: libzmq never reconnects a session it closed for a protocol error
            (e.g. a frame over MAXMSGSIZE), so silence is answered by reconnecting ourselves."""
            old = [name, "monitor"] if name == "sub" else [name]
            if name == "sub":
                socks["sub"].disable_monitor()
            for n in old:
                poller.unregister(socks[n])
                socks[n].close(0)
            socks[name] = self._open(zmq.SUB if name == "sub" else zmq.DEALER)
            if name == "sub":
                socks["monitor"] = socks["sub"].get_monitor_socket(zmq.EVENT_DISCONNECTED)
            for n in old:
                poller.register(socks[n], zmq.POLLIN)

        try:
            while not self._stop.is_set():
                events = dict(poller.poll(20))
                sub, dealer, monitor = socks["sub"], socks["dealer"], socks["monitor"]
                while not self._reports.empty():  # refusals found on the control thread (activation)
                    self._report(dealer, *self._reports.get_nowait())
                if monitor in events:
                    while monitor.poll(0):
                        recv_monitor_message(monitor)
                        self.stats.disconnects += 1
                if sub in events:
                    backlog: list[Message] = []
                    while True:
                        try:
                            frames = sub.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        msg = self._decode(frames)
                        if msg is not None:
                            last_heard = time.monotonic()
                            backlog.append(msg)
                    for msg in latest_only(backlog):
                        pull = self._guarded(self._on_broadcast, msg, dealer, pull)
                if dealer in events:
                    while True:
                        try:
                            frames = dealer.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        msg = self._decode(frames)
                        if msg is not None:
                            pull = self._guarded(self._on_piece, msg, dealer, pull)
                now = time.monotonic()
                self.stats.learner_alive = bool(last_heard) and now - last_heard < cfg.timeout_s
                if now - max(last_heard, sub_born) > cfg.timeout_s:
                    rebuild("sub")
                    sub_born = now
                    self.stats.resubscribes += 1
                if pull is not None and now - pull.last_activity > cfg.timeout_s:
                    log.warning("weights %s: pull of %s v%d stalled, restarting", cfg.robot_id, pull.wkind, pull.version)
                    rebuild("dealer")
                    pull = self._start_pull(socks["dealer"], pull.wkind)
        except Exception:
            log.exception("weights subscriber %s failed", cfg.robot_id)
        finally:
            self.stats.learner_alive = False  # nobody listens any more: never report a learner heard
            socks["sub"].disable_monitor()
            for sock in socks.values():
                sock.close(0)

    def _guarded(self, handler: Callable[..., _Pull | None], msg: Message, dealer: zmq.Socket,
                 pull: _Pull | None) -> _Pull | None:
        """``handler(msg, dealer, pull)``; a failure no check foresaw is counted as ``receiver_error``
        (the pull in progress, if any, goes on)."""
        try:
            return handler(msg, dealer, pull)
        except Exception as exc:
            self._malformed("receiver_error")
            if self.stats.malformed_reasons["receiver_error"] <= 10:
                log.warning("weights %s: dropped a message that failed in its handler (%s)", self.config.robot_id,
                            log_safe(f"{type(exc).__name__}: {exc}", 200))
            return pull

    def _decode(self, frames: list) -> Message | None:
        try:
            return decode(frames, self.config.max_message_bytes, copy=False)
        except WireError as exc:
            self.stats.malformed += 1
            self.stats.malformed_reasons[exc.reason] = self.stats.malformed_reasons.get(exc.reason, 0) + 1
            log.debug("weights %s: dropped malformed message (%s)", self.config.robot_id, log_safe(str(exc), 200))
            return None

    def _is_new(self, wkind: str, run: str, version: int) -> bool:
        if self._refused.get(wkind) == (run, version):
            return False  # refused once: not pulled again
        cur = self._current.get(wkind)
        return cur is None or run != cur[0] or version > cur[1]

    def _on_broadcast(self, msg: Message, dealer: zmq.Socket, pull: _Pull | None) -> _Pull | None:
        if msg.kind == HB:
            step, training = msg.meta.get("step"), msg.meta.get("training")
            if isinstance(step, int) and not isinstance(step, bool) and isinstance(training, bool):
                self.stats.learner_step, self.stats.learner_training = step, training
            versions = msg.meta.get("versions", {})
            if not isinstance(versions, dict):
                return pull
            for wkind, item in versions.items():
                if wkind not in self.consumers or pull is not None:
                    continue
                if isinstance(item, list) and len(item) == 2 and isinstance(item[1], int) and isinstance(item[0], str):
                    if self._is_new(wkind, item[0], item[1]):
                        pull = self._start_pull(dealer, wkind)
            return pull
        if msg.kind != WEIGHTS:
            self._malformed("unexpected_kind")
            return pull
        try:
            wkind, version, run = weights_header(msg)
        except WireError as exc:
            self._reject(dealer, "?", -1, exc.reason, str(exc))
            return pull
        if wkind not in self.consumers:
            self.stats.ignored += 1
            return pull
        if not self._is_new(wkind, run, version):
            return pull
        if msg.meta["pieces"] > 0:
            if pull is None or pull.wkind != wkind or pull.version != version:
                return self._start_pull(dealer, wkind)
            return pull
        self._accept(dealer, msg)
        return pull

    def _start_pull(self, dealer: zmq.Socket, wkind: str) -> _Pull:
        """Ask for piece 0 of the latest ``wkind``; the answer says how many pieces follow."""
        self.stats.pulls += 1
        pull = _Pull(wkind=wkind, last_activity=time.monotonic())
        self._request(dealer, pull, 0)
        return pull

    def _request(self, dealer: zmq.Socket, pull: _Pull, index: int) -> None:
        req = Message(kind=PULL, robot=self.config.robot_id, meta={"wkind": pull.wkind, "version": pull.version, "index": index})
        try:
            dealer.send_multipart(encode(req), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        pull.requested = max(pull.requested, index + 1)

    def _on_piece(self, msg: Message, dealer: zmq.Socket, pull: _Pull | None) -> _Pull | None:
        if msg.kind != PIECE:
            self._malformed("unexpected_kind")
            return pull
        m = msg.meta
        try:
            wkind, version, index, count, blob_bytes, run = (
                m["wkind"], m["version"], m["index"], m["count"], m["blob_bytes"], m["run"]
            )
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (version, index, count, blob_bytes)):
                raise TypeError
            data = msg.arrays["data"]
            if data.dtype != np.uint8 or not 0 <= index < count or count > 1_000_000:
                raise TypeError
            if not 0 <= blob_bytes <= self.config.max_message_bytes + MAX_HEADER_BYTES + 8 * (MAX_ARRAYS + 2):
                raise TypeError  # no packed message this robot accepts is that large
        except (KeyError, TypeError):
            self._malformed("bad_piece")
            return pull
        if pull is None or wkind != pull.wkind:
            return pull  # an answer to a pull we gave up
        if pull.version == -1 or version != pull.version or run != pull.run:
            if index != 0:
                return pull  # a piece of a version we no longer pull
            pull.version, pull.run, pull.count, pull.blob_bytes, pull.pieces = version, run, count, blob_bytes, {}
            pull.received_bytes = 0
            pull.requested = 1
        pull.received_bytes += data.nbytes - len(pull.pieces.get(index, b""))
        pull.pieces[index] = bytes(data)
        if pull.received_bytes > pull.blob_bytes:  # more than announced
            self._reject(dealer, wkind, version, "bad_size", f"pieces exceed the announced {pull.blob_bytes} bytes")
            return None
        pull.last_activity = time.monotonic()
        self.stats.pieces += 1
        while pull.requested < pull.count and pull.requested - len(pull.pieces) < self.config.pull_window:
            self._request(dealer, pull, pull.requested)
        if len(pull.pieces) < pull.count:
            return pull
        blob = b"".join(pull.pieces[i] for i in range(pull.count))
        if len(blob) != pull.blob_bytes:
            self._reject(dealer, wkind, version, "bad_size", f"{len(blob)} != {pull.blob_bytes}")
            return None
        try:
            full = decode(unpack_frames(blob, self.config.max_message_bytes), self.config.max_message_bytes)
            if weights_header(full) != (wkind, version, run):
                raise WireError("bad_meta", "pieces do not match the announced weights")
        except WireError as exc:
            self._reject(dealer, wkind, version, exc.reason, str(exc))
            return None
        self._accept(dealer, full)
        return None

    def _accept(self, dealer: zmq.Socket, msg: Message) -> None:
        wkind, version, run = weights_header(msg)
        self.stats.received += 1
        consumer = self.consumers[wkind]
        prepared: Any = None
        try:
            # large sets: the digest is computed beside the consumer's preparation (both release the GIL);
            # nothing is staged before it is confirmed
            big = int(msg.meta.get("nbytes", 0)) > HASH_ASIDE_BYTES
            digest = self._hasher().submit(fold_digest, msg.arrays) if big else None
            arrays = check_weights_message(msg, self.expected[wkind], verify_hash=not big)
            prepared = consumer.prepare_weights(arrays, version)
            if digest is not None:
                verify_digest(msg, digest.result())
        except Exception as exc:  # a set that fails a check, or that the consumer cannot build, is refused
            if prepared is not None:
                self._release(consumer, prepared)
            self._refused[wkind] = (run, version)
            if isinstance(exc, WireError):
                self._reject(dealer, wkind, version, exc.reason, str(exc))
            else:
                self._reject(dealer, wkind, version, "prepare_failed", repr(exc)[:200])
            return
        self._current[wkind] = (run, version)
        self.history[wkind].append(version)
        self.stats.accepted += 1
        self.stats.versions[wkind] = version
        replaced = self._staged.pop(wkind, None)  # atomic: either this thread or the control thread has it
        self._staged[wkind] = (version, prepared)  # from here the control thread may swap it in
        if replaced is not None:
            self._release(consumer, replaced[1])
        if self.on_staged is not None:
            self.on_staged(wkind, version)
        self._report(dealer, wkind, version, "staged", "")

    @staticmethod
    def _release(consumer: Any, prepared: Any) -> None:
        """Hand a prepared set that will never be loaded back to its consumer (if it takes them back)."""
        release = getattr(consumer, "release_weights", None)
        if callable(release):
            release(prepared)

    def _malformed(self, reason: str) -> None:
        self.stats.malformed += 1
        self.stats.malformed_reasons[reason] = self.stats.malformed_reasons.get(reason, 0) + 1

    def _count_rejected(self, reason: str) -> None:
        self.stats.rejected += 1
        self.stats.rejected_reasons[reason] = self.stats.rejected_reasons.get(reason, 0) + 1

    def _reject(self, dealer: zmq.Socket, wkind: str, version: int, reason: str, detail: str) -> None:
        self._count_rejected(reason)
        log.warning("weights %s: refused %s v%s (%s); keeping the current weights", self.config.robot_id,
                    log_safe(wkind, 40), version, log_safe(detail, 200))
        self._report(dealer, wkind, version, "refused", reason)

    def _report(self, dealer: zmq.Socket, wkind: str, version: int, status: str, reason: str) -> None:
        msg = Message(
            kind=REPORT, robot=self.config.robot_id,
            meta={"wkind": wkind, "version": int(version), "status": status, "reason": reason},
        )
        try:
            dealer.send_multipart(encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
