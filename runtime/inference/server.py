"""The base-policy server: a policy behind a pyzmq ROUTER socket.

One loop serves both deployments:

- **process** backend: :func:`worker_main` runs in a child process spawned by the session. It builds
  the policy, warms it up, binds ``tcp://127.0.0.1:<free port>`` and only then reports ready (with the
  endpoint and the policy's sizes) to the parent over a pipe. A policy that fails to build reports the
  error instead, so the session fails at start with the policy's own message.
- **remote** backend: ``tandem serve-policy`` runs :func:`serve_policy` on another machine (a GPU box).

Messages (:mod:`tandem.protocol.wire`, never pickle) on the policy link:

======= ================= ==========================================================================
kind    direction         content
======= ================= ==========================================================================
infer   robot -> policy   ``seq`` = request id, ``meta.task`` = instruction, arrays = the observation
chunk   policy -> robot   ``seq`` = request id, arrays ``actions`` float32[P, A], ``features``
                          float16[F] (and ``samples`` float32[N, P, A] when the request's observation
                          asked for N samples: ``tandem.num_samples``); ``meta``: policy, version, infer_s
error   policy -> robot   ``seq`` = request id, ``meta.error``: why inference failed (the robot stops)
info    both ways         request / reply: ``meta`` holds the policy's name and sizes (and
                          ``weights``, the base weights schema, for a policy that takes them)
stage   robot -> policy   ``meta``: version, sha256; arrays: new base weights. The policy builds and
                          checks a network beside the running one; replies ``staged`` or ``error``
activate robot -> policy  ``meta.version``: swap the staged network in (at an episode boundary);
                          replies ``staged`` (``meta.active`` true) or ``error``
======= ================= ==========================================================================

Base weights come from the robot's weights link (``tandem.runtime.links.weights.BaseWeights``, on a
DEALER socket of its own), never straight from a learner: the robot checked them (schema, sha256,
finite) and decides when they run. The server checks them again (sha256, names, shapes, finite) before
it stages them; refused weights change nothing. A server shared by several robots swaps for all of them.

Requests that queue up while the policy is busy are superseded: per client only the newest one is
answered (the robot's scheduler drops replies to older ids anyway). Requests from several clients
(robots sharing one policy server) that are waiting together go through one ``infer_batch`` call. A malformed message is counted
and dropped (each message is handled under its own guard: whatever it holds, the server keeps
serving); an observation that does not match the policy's schema gets an ``error`` reply.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.core.config import build_group
from tandem.core.registry import component_class
from tandem.hardware.features import Feature, check_observation, zero_observation
from tandem.policies.base import BasePolicy, infer_requests, requested_samples
from tandem.protocol.security import bound_endpoint, load_keys, open_socket, start_authenticator
from tandem.protocol.wire import Message, WireError, decode, digest_arrays, encode, log_safe, schema_hash

log = logging.getLogger(__name__)

INFER, CHUNK, ERROR, INFO = "infer", "chunk", "error", "info"
STAGE, ACTIVATE, STAGED = "stage", "activate", "staged"
LINK_SCHEMA = schema_hash({"link": "policy", "kinds": [INFER, CHUNK, ERROR, INFO, STAGE, ACTIVATE, STAGED], "v": 2})


def policy_info(policy: BasePolicy, features: dict[str, Feature] | None = None) -> dict[str, Any]:
    """What a client needs to know about a served policy (JSON-able): name, sizes, observation schema,
    and ``weights`` (name -> [dtype, shape]) when the policy takes base weights (``stage_weights``)."""
    info: dict[str, Any] = {
        "name": policy.name,
        "chunk_length": int(policy.chunk_length),
        "action_dim": int(policy.action_dim),
        "feature_dim": int(policy.feature_dim),
        "version": int(policy.version),
        "observation": {k: [f.dtype, list(f.shape)] for k, f in (features or {}).items()},
    }
    if takes_base_weights(policy):
        info["weights"] = {k: [d, list(s)] for k, (d, s) in policy.weights_schema().items()}
    return info


def takes_base_weights(policy: Any) -> bool:
    """Whether ``policy`` can swap in base weights (``weights_schema``, ``stage_weights``, ``activate_weights``)."""
    return all(callable(getattr(policy, m, None)) for m in ("weights_schema", "stage_weights", "activate_weights"))


@dataclass
class ServerStats:
    """Counters of a policy server."""

    requests: int = 0
    replies: int = 0
    superseded: int = 0
    malformed: int = 0
    errors: int = 0
    base_staged: int = 0
    base_activated: int = 0
    base_refused: int = 0
    infer_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (inference time p50/p99 in ms)."""
        ms = np.asarray(self.infer_ms[-1000:] or [0.0])
        return {
            "requests": self.requests,
            "replies": self.replies,
            "superseded": self.superseded,
            "malformed": self.malformed,
            "errors": self.errors,
            "base_staged": self.base_staged,
            "base_activated": self.base_activated,
            "base_refused": self.base_refused,
            "infer_p50_ms": round(float(np.percentile(ms, 50)), 3),
            "infer_p99_ms": round(float(np.percentile(ms, 99)), 3),
        }


class PolicyServer:
    """Answers ``infer`` and ``info`` requests on a bound ROUTER socket.

    Args:
        policy: the policy to serve.
        socket: a bound zmq ROUTER socket (owned by the caller).
        features: the observation schema requests must match.
        max_bytes: largest request accepted.
    """

    def __init__(self, policy: BasePolicy, socket: Any, features: dict[str, Feature], max_bytes: int) -> None:
        self.policy = policy
        self.socket = socket
        self.features = features
        self.max_bytes = max_bytes
        self.stats = ServerStats()
        self.info = policy_info(policy, features)

    def _send(self, identity: Any, message: Message) -> None:
        import zmq

        try:
            self.socket.send_multipart([identity, *encode(message)], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # the client is gone or not reading; it will time out and re-ask
            log.debug("policy server: reply dropped (client not reading)")

    def serve_once(self, poll_ms: int = 50) -> int:
        """Wait up to ``poll_ms`` for requests, answer them; returns the number of chunks sent."""
        import zmq

        if not self.socket.poll(poll_ms):
            return 0
        latest: dict[bytes, tuple[list[Any], Message]] = {}
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                self._take(frames, latest)
            except Exception as exc:  # WireError, or anything no check foresaw: counted, never fatal
                self.stats.malformed += 1
                log.debug("policy server: dropped a malformed message (%s)", log_safe(str(exc), 200))
        return self._answer([(frames[0], msg) for frames, msg in latest.values()])

    def _take(self, frames: list[Any], latest: dict[bytes, tuple[list[Any], Message]]) -> None:
        """Decode one request: answer ``info`` now, keep an ``infer`` as its client's latest.

        Raises:
            WireError: a malformed message, another link's schema or an unknown kind.
        """
        if len(frames) < 2:
            raise WireError("empty")
        identity, body = frames[0], frames[1:]
        msg = decode(body, self.max_bytes)
        if msg.schema != LINK_SCHEMA:
            raise WireError("bad_schema", f"{log_safe(msg.schema, 40)} != {LINK_SCHEMA}")
        if msg.kind == INFO:
            self._send(identity, Message(kind=INFO, schema=LINK_SCHEMA, seq=msg.seq, meta=self.info))
        elif msg.kind in (STAGE, ACTIVATE):
            self._send(identity, self._base_weights(msg))
        elif msg.kind == INFER:
            self.stats.requests += 1
            key = bytes(identity.bytes)
            if key in latest:
                self.stats.superseded += 1
            latest[key] = (frames, msg)
        else:
            raise WireError("unexpected_kind", log_safe(msg.kind, 40))

    def _base_weights(self, msg: Message) -> Message:
        """Stage or activate base weights; the reply (``staged`` or ``error``). Refused weights change nothing."""
        version = msg.meta.get("version")
        try:
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise ValueError(f"meta.version must be a non-negative int, got {log_safe(version, 40)}")
            if not takes_base_weights(self.policy):
                raise ValueError(f"policy {self.policy.name!r} does not take base weights")
            if msg.kind == STAGE:
                if msg.meta.get("sha256") != digest_arrays(msg.arrays):
                    raise ValueError("base weights sha256 does not match their arrays")
                self.policy.stage_weights(dict(msg.arrays), version)
                self.stats.base_staged += 1
            else:
                self.policy.activate_weights(version)
                self.info["version"] = int(version)
                self.stats.base_activated += 1
                log.info("base weights v%d active", version)
        except Exception as exc:  # refused: the running network stays
            self.stats.base_refused += 1
            log.warning("refused base weights (%s): %s", msg.kind, log_safe(str(exc), 300))
            return Message(kind=ERROR, schema=LINK_SCHEMA, seq=msg.seq, meta={"error": f"{type(exc).__name__}: {exc}"[:2000]})
        return Message(kind=STAGED, schema=LINK_SCHEMA, seq=msg.seq,
                       meta={"version": int(version), "active": msg.kind == ACTIVATE})

    def _error(self, identity: Any, seq: int, error: str) -> None:
        self.stats.errors += 1
        self._send(identity, Message(kind=ERROR, schema=LINK_SCHEMA, seq=seq, meta={"error": error[:2000]}))

    def _answer(self, requests: list[tuple[Any, Message]]) -> int:
        """Answer one request per client; several clients (robots) are batched into one ``infer_batch``."""
        ok = []
        for identity, msg in requests:
            task = msg.meta.get("task", "")
            problem = check_observation(msg.arrays, self.features)
            if not isinstance(task, str):
                problem = "meta.task must be a string"
            try:
                requested_samples(msg.arrays)
            except ValueError as exc:
                problem = problem or str(exc)
            if problem:
                self._error(identity, msg.seq, problem)
            else:
                ok.append((identity, msg, task))
        if not ok:
            return 0
        t0 = time.perf_counter()
        try:
            chunks = infer_requests(self.policy, [m.arrays for _, m, _ in ok], [t for _, _, t in ok])
        except Exception as exc:  # reported to the robots, which stop with this message
            log.exception("policy server: inference failed")
            for identity, msg, _ in ok:
                self._error(identity, msg.seq, f"{type(exc).__name__}: {exc}")
            return 0
        self.stats.infer_ms.append((time.perf_counter() - t0) * 1e3)
        if len(self.stats.infer_ms) > 10_000:
            del self.stats.infer_ms[:5000]
        for (identity, msg, _), chunk in zip(ok, chunks, strict=True):
            arrays = {"actions": chunk.actions.astype(np.float32), "features": chunk.features.astype(np.float16)}
            if chunk.samples is not None:
                arrays["samples"] = chunk.samples.astype(np.float32)
            reply = Message(
                kind=CHUNK,
                schema=LINK_SCHEMA,
                seq=msg.seq,
                meta={"policy": chunk.policy, "version": int(chunk.version), "infer_s": float(chunk.infer_s)},
                arrays=arrays,
            )
            self._send(identity, reply)
            self.stats.replies += 1
        return len(ok)

    def serve(self, should_stop: Callable[[], bool], poll_ms: int = 50) -> None:
        """Serve until ``should_stop()`` is true (checked at least every ``poll_ms``)."""
        while not should_stop():
            self.serve_once(poll_ms)


def build_policy(spec: dict[str, Any]) -> tuple[BasePolicy, Any]:
    """(policy, unconnected robot) from ``spec["robot"]`` and ``spec["policy"]`` config dicts."""
    robot_cfg = build_group("robot", spec["robot"])
    robot = component_class("robot", robot_cfg.type)(robot_cfg)
    policy_cfg = build_group("policy", spec["policy"])
    policy = component_class("policy", policy_cfg.type)(policy_cfg, robot)
    return policy, robot


def warm_up(policy: BasePolicy, robot: Any, n: int) -> float:
    """Run ``n`` inferences on a zero observation (first-call allocations, kernels); returns the last one's s."""
    obs = zero_observation(robot.observation_features)
    dt = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        policy.infer(obs, robot.task)
        dt = time.perf_counter() - t0
    return dt


@dataclass
class ServerSocket:
    """A bound ROUTER socket with its context and (CURVE only) authenticator.

    The context is private (a ZAP authenticator serves a whole context: the learner's, in the same
    process, may have its own) and must be released by :meth:`close`, in a ``finally``: one left to the
    garbage collector can block in ``zmq_ctx_term``. Its sockets default to linger 0.
    """

    context: Any
    socket: Any
    endpoint: str
    auth: Any = None

    def close(self) -> None:
        """Close the socket, stop the authenticator, destroy the context (linger 0). Safe to call twice."""
        try:
            self.socket.close(0)
        finally:
            try:
                if self.auth is not None:
                    self.auth.stop()
                    self.auth = None
            finally:
                self.context.destroy(linger=0)  # closes any socket left on it, never waits on one


def open_server_socket(bind: str, keys_dir: str, max_bytes: int) -> ServerSocket:
    """A bound ROUTER socket; CURVE when ``keys_dir`` is set (required for a non-loopback ``bind``)."""
    import zmq

    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)  # the default of every socket on it, the authenticator's included
    auth = None
    try:
        if keys_dir:
            auth = start_authenticator(ctx, load_keys(keys_dir, "server"))
        sock = open_socket(
            ctx, zmq.ROUTER, bind, bind=True, max_message_bytes=max_bytes, keys_dir=keys_dir,
            field="policy_link.bind", options={zmq.SNDHWM: 16, zmq.RCVHWM: 16},
        )
    except Exception:
        try:
            if auth is not None:
                auth.stop()
        finally:
            ctx.destroy(linger=0)
        raise
    return ServerSocket(ctx, sock, bound_endpoint(sock), auth)


def worker_main(spec_json: str, conn: Any) -> None:  # pragma: no cover - runs in a child process
    """Child-process entry of the ``process`` backend.

    ``spec_json``: {"robot": dict, "policy": dict, "warmup": int, "nice": int, "max_bytes": int}.
    ``conn``: the child's end of a ``multiprocessing.Pipe``; messages are JSON bytes only. Sends
    ``{"ok": true, "endpoint", "info", "warmup_s"}`` once serving, or ``{"ok": false, "error"}``.
    The worker stops when the parent sends anything, closes the pipe, or dies.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s policy-worker: %(message)s")
    log.setLevel(logging.INFO)
    spec = json.loads(spec_json)
    parent = os.getppid()
    try:
        if spec.get("nice", 0):
            os.nice(int(spec["nice"]))
        policy, robot = build_policy(spec)
        warmup_s = warm_up(policy, robot, int(spec.get("warmup", 2)))
        server_socket = open_server_socket("tcp://127.0.0.1:*", "", int(spec["max_bytes"]))
    except BaseException as exc:
        conn.send_bytes(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}).encode())
        conn.close()
        return

    def should_stop() -> bool:
        try:
            return conn.poll(0) or os.getppid() != parent
        except (OSError, EOFError):
            return True

    server = None
    try:
        server = PolicyServer(policy, server_socket.socket, robot.observation_features, int(spec["max_bytes"]))
        ready = {"ok": True, "endpoint": server_socket.endpoint, "info": server.info, "warmup_s": warmup_s}
        conn.send_bytes(json.dumps(ready).encode())
        server.serve(should_stop, poll_ms=20)
    finally:
        server_socket.close()
        policy.close()
        if server is not None:
            log.info("stopped: %s", server.stats.to_dict())


def serve_policy(
    policy: BasePolicy,
    robot: Any,
    bind: str,
    keys_dir: str = "",
    max_bytes: int = 64 * 1024 * 1024,
    stop: threading.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> ServerStats:
    """``tandem serve-policy``: serve ``policy`` on ``bind`` until ``stop`` is set; returns the stats."""
    stop = stop or threading.Event()
    server_socket = open_server_socket(bind, keys_dir, max_bytes)
    try:
        server = PolicyServer(policy, server_socket.socket, robot.observation_features, max_bytes)
        if on_ready is not None:
            on_ready(server_socket.endpoint)
        server.serve(stop.is_set)
    finally:
        server_socket.close()
    return server.stats
