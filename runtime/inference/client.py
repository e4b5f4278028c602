"""Base inference in another process or on another machine, as non-blocking InferenceBackends.

- :class:`ProcessBackend` (``session.backend=process``): spawns :func:`policy_worker.worker_main` in
  a child process (the policy's own interpreter: no GIL contention with the control loop, lower CPU
  priority), waits until it has built and warmed up the policy, then talks to it over pyzmq on
  127.0.0.1. ``close()`` stops it and, if it does not stop, kills it. A worker that dies during the
  session (killed, out of memory) is restarted in the background, at most ``policy_link.max_restarts``
  times: meanwhile ``poll`` returns nothing (the scheduler's plan runs out and the robot holds), then
  the request the dead worker never answered is sent to the new one. Once the restarts are used up,
  ``poll`` raises and the session ends the episode in a controlled stop.
- :class:`RemoteBackend` (``session.backend=remote``): connects to ``tandem serve-policy`` running
  elsewhere (``policy_link.endpoint``); a non-loopback endpoint needs CURVE keys (``policy_link.keys_dir``).

Both send ``infer`` requests without blocking (a full send queue drops the request, counted; the
scheduler re-asks after its request timeout) and return the replies that have arrived. Ids let the
scheduler drop stale replies. Observations travel as raw arrays (:mod:`tandem.protocol.wire`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.core.validate import in_range, positive
from tandem.policies.base import MAX_SAMPLES, BasePolicy, Chunk, PolicyLoadError
from tandem.protocol.security import open_socket
from tandem.protocol.wire import Message, WireError, decode, encode, log_safe
from tandem.runtime.inference.server import CHUNK, ERROR, INFER, INFO, LINK_SCHEMA, worker_main

log = logging.getLogger(__name__)

MAX_CHUNK_TICKS = 4096  # the longest action chunk a reply may hold


@dataclass
class PolicyLinkConfig:
    """Where base inference runs when ``session.backend`` is "process" or "remote".

    Attributes:
        endpoint: remote backend: the ``tandem serve-policy`` address, ``tcp://host:port``.
        bind: ``tandem serve-policy``: the address to listen on (non-loopback needs ``keys_dir``).
        keys_dir: CURVE keys from ``tandem keys DIR`` (both sides); empty: loopback only.
        start_timeout_s: seconds to wait for the worker to build and warm up the policy, or for the
            remote server's first answer, before failing.
        warmup: inferences run on a dummy observation before the worker reports ready.
        nice: niceness added to the worker process (CPU priority below the control loop's).
        max_message_bytes: largest message accepted on the link.
        max_restarts: process backend: how many times a worker that died is restarted in one session
            (the robot holds meanwhile); 0: a dead worker ends the session in a controlled stop.
    """

    endpoint: str = "tcp://127.0.0.1:5555"
    bind: str = "tcp://127.0.0.1:5555"
    keys_dir: str = ""
    start_timeout_s: float = 180.0
    warmup: int = 3
    nice: int = 5
    max_message_bytes: int = 64 * 1024 * 1024
    max_restarts: int = 3

    def __post_init__(self) -> None:
        positive("policy_link.start_timeout_s", self.start_timeout_s)
        in_range("policy_link.max_restarts", self.max_restarts, 0, 100)
        in_range("policy_link.warmup", self.warmup, 0, 1000)
        in_range("policy_link.nice", self.nice, 0, 19)
        in_range("policy_link.max_message_bytes", self.max_message_bytes, 1024, 2**31 - 1)


@dataclass
class LinkStats:
    """Client-side counters."""

    sent: int = 0
    send_dropped: int = 0
    replies: int = 0
    malformed: int = 0


class PolicyProxy(BasePolicy):
    """Stands in for a policy that runs elsewhere: its name and sizes, for the session's checks."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.name = str(info["name"])
        self.chunk_length = int(info["chunk_length"])
        self.action_dim = int(info["action_dim"])
        self.feature_dim = int(info["feature_dim"])
        self.version = int(info.get("version", 0))

    def infer(self, observation: dict[str, np.ndarray], task: str) -> Chunk:
        """Not available here: the policy runs in a worker process or on a policy server."""
        raise RuntimeError(f"policy {self.name!r} runs behind a policy link; submit through its backend")


class LinkBackend:
    """DEALER client of a policy server. ``submit``/``poll`` never block longer than asked.

    Args:
        endpoint: the server's ROUTER address.
        config: link settings (keys, size limit).
    """

    def __init__(self, endpoint: str, config: PolicyLinkConfig) -> None:
        import zmq

        self.endpoint = endpoint
        self.config = config
        self.stats = LinkStats()
        # the process's shared context, never terminated here: a private one finalized by the garbage
        # collector before its socket (a backend never closed, in cyclic garbage) blocks forever in zmq_ctx_term
        self._ctx = zmq.Context.instance()
        self._sock = self._open(endpoint)  # open_socket closes the socket if it fails
        self._closed = False

    def _open(self, endpoint: str) -> Any:
        """A DEALER socket connected to ``endpoint`` (sends are dropped, not queued, while unconnected)."""
        import zmq

        return open_socket(
            self._ctx, zmq.DEALER, endpoint, bind=False, max_message_bytes=self.config.max_message_bytes,
            keys_dir=self.config.keys_dir, field="policy_link.endpoint",
            options={zmq.SNDHWM: 4, zmq.RCVHWM: 64, zmq.IMMEDIATE: 1},
        )

    # -- InferenceBackend ---------------------------------------------------------------------------
    def submit(self, request_id: int, observation: dict[str, np.ndarray], task: str) -> None:
        """Send an ``infer`` request; if the link cannot take it now it is dropped (counted)."""
        self._send(request_id, observation, task)

    def _send(self, request_id: int, observation: dict[str, np.ndarray], task: str) -> bool:
        """Send an ``infer`` request without blocking; False if it was dropped (counted)."""
        import zmq

        msg = Message(kind=INFER, schema=LINK_SCHEMA, seq=int(request_id), meta={"task": task},
                      arrays={k: np.asarray(v) for k, v in observation.items()})
        try:
            self._sock.send_multipart(encode(msg), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.stats.send_dropped += 1
            return False
        self.stats.sent += 1
        return True

    def poll(self, wait_s: float = 0.0) -> list[tuple[int, Chunk]]:
        """Chunk replies that have arrived (waiting up to ``wait_s`` for the first).

        Raises:
            RuntimeError: the policy reported an inference error, or the worker died.
        """
        import zmq

        self._check_alive()
        out: list[tuple[int, Chunk]] = []
        if not self._sock.poll(int(wait_s * 1000) if wait_s > 0 else 0):
            return out
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                msg = decode(frames, self.config.max_message_bytes, copy=True)
                if msg.schema != LINK_SCHEMA:
                    raise WireError("bad_schema", log_safe(msg.schema, 40))
                if msg.kind == ERROR:
                    error = log_safe(msg.meta.get("error"), 2000)
                    raise RuntimeError(f"base policy inference failed on {self.endpoint}: {error}")
                if msg.kind == CHUNK:
                    out.append((msg.seq, self._chunk(msg)))
                    self.stats.replies += 1
                elif msg.kind != INFO:
                    raise WireError("unexpected_kind", log_safe(msg.kind, 40))
            except RuntimeError:
                raise
            except Exception as exc:  # WireError, a chunk of the wrong form, anything else: counted, dropped
                self.stats.malformed += 1
                log.debug("policy link: dropped a malformed reply (%s)", log_safe(str(exc), 200))
        return out

    def _chunk(self, msg: Message) -> Chunk:
        """The Chunk of a ``chunk`` reply: actions float32[P, A] with A the policy's action_dim and
        1 <= P <= MAX_CHUNK_TICKS, finite; features float16[F] with F its feature_dim (when known).

        Raises:
            ValueError / KeyError / TypeError: the reply is not such a chunk.
        """
        actions = msg.arrays["actions"]
        features = msg.arrays.get("features", np.zeros(0, np.float16))
        info = getattr(self, "info", None) or {}
        action_dim, feature_dim = info.get("action_dim"), info.get("feature_dim")
        if actions.ndim != 2 or not 1 <= actions.shape[0] <= MAX_CHUNK_TICKS:
            raise ValueError(f"actions of shape {actions.shape}")
        if isinstance(action_dim, int) and actions.shape[1] != action_dim:
            raise ValueError(f"actions of shape {actions.shape}, the policy's action_dim is {action_dim}")
        if isinstance(feature_dim, int) and feature_dim > 0 and features.size != feature_dim:
            raise ValueError(f"{features.size} features, the policy's feature_dim is {feature_dim}")
        if not np.isfinite(actions).all():
            raise ValueError("non-finite actions")
        samples = msg.arrays.get("samples")
        if samples is not None and (samples.ndim != 3 or samples.shape[1:] != actions.shape
                                    or not 1 <= len(samples) <= MAX_SAMPLES or not np.isfinite(samples).all()):
            raise ValueError(f"samples of shape {samples.shape} for actions of shape {actions.shape}")
        return Chunk(
            actions=actions, features=features, policy=str(msg.meta.get("policy", ""))[:200],
            version=int(msg.meta.get("version", 0)), infer_s=float(msg.meta.get("infer_s", 0.0)), samples=samples,
        )

    def close(self) -> None:
        """Close the socket (linger 0). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._sock.close(0)

    # -- helpers ------------------------------------------------------------------------------------
    def _check_alive(self) -> None:
        """Raise if the server is known to be gone (subclasses with a process override this)."""

    def request_info(self, timeout_s: float) -> dict[str, Any]:
        """Ask the server for the policy's name and sizes; waits up to ``timeout_s``.

        Raises:
            PolicyLoadError: no answer in time.
        """
        import zmq

        deadline = time.monotonic() + timeout_s
        next_ask = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_ask:  # IMMEDIATE drops sends until connected: re-ask
                try:
                    self._sock.send_multipart(encode(Message(kind=INFO, schema=LINK_SCHEMA)), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
                next_ask = time.monotonic() + 0.5
            if self._sock.poll(100):
                try:
                    msg = decode(self._sock.recv_multipart(zmq.NOBLOCK), self.config.max_message_bytes)
                except (zmq.Again, WireError):
                    continue
                if msg.kind == INFO and msg.schema == LINK_SCHEMA:
                    return dict(msg.meta)
        raise PolicyLoadError(
            f"no policy server answered at {self.endpoint} within {timeout_s} s; start `tandem serve-policy` "
            "there (same policy and robot config) or check policy_link.endpoint / keys_dir"
        )


class RemoteBackend(LinkBackend):
    """A policy served by ``tandem serve-policy`` on ``config.endpoint``."""

    def __init__(self, config: PolicyLinkConfig) -> None:
        super().__init__(config.endpoint, config)
        try:
            self.info = self.request_info(config.start_timeout_s)
        except BaseException:
            self.close()
            raise


class _WorkerGone(Exception):
    """The restart was cancelled (the backend is closing)."""


@dataclass
class _Restart:
    """A worker being restarted on a background thread (``done`` is set when it is ready or failed)."""

    exitcode: int | None
    since: float
    done: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    process: Any = None
    conn: Any = None
    ready: dict[str, Any] | None = None
    error: BaseException | None = None


class ProcessBackend(LinkBackend):
    """A policy in a child process on this machine (spawned here, stopped in ``close``).

    A worker that dies (killed, out of memory, a crash in native code) is restarted on a background
    thread, at most ``config.max_restarts`` times per backend: until the new worker is ready ``poll``
    returns nothing, so the scheduler's plan runs out and the safety filter holds the robot (starved
    ticks); then the newest request not yet answered is sent to the new worker and the episode goes
    on. A dead worker with no restarts left, or a restart that fails, makes ``poll`` raise
    RuntimeError ("... worker process exited ...").

    Args:
        robot_config: the robot's config dataclass (the worker builds the policy for its schemas).
        policy_config: the policy's config dataclass.
        config: link settings.

    Attributes:
        process: the current worker process (a new one after a restart).
        restarts: restarts begun so far (``worker_restarts`` in :meth:`fault_stats`).

    Raises:
        PolicyLoadError: the worker could not build the policy (its message), died, or timed out.
    """

    def __init__(self, robot_config: Any, policy_config: Any, config: PolicyLinkConfig) -> None:
        self._spec = json.dumps({
            "robot": dataclasses.asdict(robot_config),
            "policy": dataclasses.asdict(policy_config),
            "warmup": config.warmup,
            "nice": config.nice,
            "max_bytes": config.max_message_bytes,
        })
        self._policy_type = str(getattr(policy_config, "type", "?"))
        self.restarts = 0
        self.resent = 0  # requests sent again to a restarted worker
        self._restart: _Restart | None = None
        self._unanswered: tuple[int, dict[str, np.ndarray], str] | None = None
        self._resend = False
        self._closed = True  # until the link is open
        self.process, self._conn = self._spawn()
        self._last_check = 0.0
        try:
            ready = self._wait_ready(self.process, self._conn, config.start_timeout_s)
            self.info = dict(ready["info"])
            self.warmup_s = float(ready.get("warmup_s", 0.0))
            super().__init__(ready["endpoint"], config)
        except BaseException:
            self._stop_worker(self.process, self._conn)
            raise

    def _spawn(self) -> tuple[Any, Any]:
        """Start a worker process; (process, the parent's end of its pipe)."""
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        conn, child_conn = ctx.Pipe(duplex=True)
        process = ctx.Process(target=worker_main, args=(self._spec, child_conn), name="tandem-policy-worker",
                              daemon=True)
        process.start()
        child_conn.close()
        return process, conn

    def _wait_ready(self, process: Any, conn: Any, timeout_s: float,
                    cancel: threading.Event | None = None) -> dict[str, Any]:
        """The worker's ready message (``{"ok", "endpoint", "info", "warmup_s"}``).

        Raises:
            PolicyLoadError: the worker reported an error, exited, or was not ready within ``timeout_s``.
            _WorkerGone: ``cancel`` was set.
        """
        policy_type = self._policy_type
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise _WorkerGone
            if conn.poll(0.05):
                try:
                    ready = json.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    break  # the worker died before reporting
                if not ready.get("ok"):
                    raise PolicyLoadError(f"policy={policy_type} failed to start: {ready.get('error')}")
                return ready
            if not process.is_alive():
                break
        code = process.exitcode
        if code is None:
            raise PolicyLoadError(
                f"policy={policy_type}: the worker did not get ready within policy_link.start_timeout_s={timeout_s} s"
            )
        raise PolicyLoadError(f"policy={policy_type}: the worker process exited with code {code} before it was ready")

    # -- InferenceBackend ---------------------------------------------------------------------------
    def submit(self, request_id: int, observation: dict[str, np.ndarray], task: str) -> None:
        """Send an ``infer`` request (kept until answered, to be sent again to a restarted worker); while the
        worker restarts it is only kept."""
        self._unanswered = (int(request_id), observation, task)  # references: the sockets send them zero-copy too
        if self._restart is not None:
            return
        sent = self._send(request_id, observation, task)
        self._resend = self._resend and not sent

    def poll(self, wait_s: float = 0.0) -> list[tuple[int, Chunk]]:
        """Chunk replies that have arrived; nothing while the worker restarts.

        Raises:
            RuntimeError: the policy reported an inference error, or the worker died and was not restarted
                (``policy_link.max_restarts`` used up, or the restart failed).
        """
        if self._resend and self._restart is None and not self._closed:
            # the new worker's socket connects within milliseconds: until then sends are dropped, so the
            # request the dead worker never answered is tried again at each poll
            if self._unanswered is None or self._send(*self._unanswered):
                self._resend = False
                self.resent += int(self._unanswered is not None)
        out = super().poll(wait_s)
        if self._unanswered is not None and any(rid == self._unanswered[0] for rid, _ in out):
            self._unanswered = None
        return out

    def fault_stats(self) -> dict[str, int]:
        """``worker_restarts``: restarts of a worker that died, begun so far."""
        return {"worker_restarts": self.restarts}

    # -- restarts -----------------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._restart is not None:
            self._finish_restart()
            return
        now = time.monotonic()
        if now - self._last_check < 0.25:
            return
        self._last_check = now
        code = self.process.exitcode
        if code is None:
            return
        limit = self.config.max_restarts
        if self.restarts >= limit:
            after = f" (after {self.restarts} restarts; policy_link.max_restarts={limit})" if self.restarts else ""
            raise RuntimeError(f"the base policy worker process exited with code {code}{after}")
        self.restarts += 1
        log.warning("the base policy worker (pid %s) exited with code %s: restarting it (%d of policy_link.max_restarts=%d);"
                    " the robot holds until it is ready", self.process.pid, code, self.restarts, limit)
        restart = _Restart(exitcode=code, since=now)
        restart.thread = threading.Thread(target=self._run_restart, args=(restart,), name="policy-worker-restart",
                                          daemon=True)
        self._restart = restart
        restart.thread.start()

    def _run_restart(self, restart: _Restart) -> None:
        """The restart thread: spawn a worker and wait until it is ready (stopped again on failure)."""
        try:
            restart.process, restart.conn = self._spawn()
            restart.ready = self._wait_ready(restart.process, restart.conn, self.config.start_timeout_s, restart.cancel)
        except BaseException as exc:  # noqa: BLE001 - reported to the control thread by _finish_restart
            restart.error = exc
            if restart.process is not None:
                self._stop_worker(restart.process, restart.conn)
        finally:
            restart.done.set()

    def _finish_restart(self) -> None:
        """On the control thread, once the restart thread is done: switch to the new worker and send it the
        request the dead one never answered.

        Raises:
            RuntimeError: the restart failed.
        """
        restart = self._restart
        if restart is None or not restart.done.is_set():
            return
        self._restart = None
        old = self.process
        if restart.error is not None:
            raise RuntimeError(
                f"the base policy worker process exited with code {restart.exitcode} and restarting it failed: "
                f"{restart.error}") from restart.error
        info = dict(restart.ready["info"])
        sizes = ("name", "chunk_length", "action_dim", "feature_dim")
        if any(info.get(k) != self.info.get(k) for k in sizes):
            self._stop_worker(restart.process, restart.conn)
            raise RuntimeError(f"the restarted base policy worker serves another policy ({info}) than before ({self.info})")
        endpoint = restart.ready["endpoint"]
        sock = self._open(endpoint)
        self._sock.close(0)
        self._sock, self.endpoint = sock, endpoint
        self._conn.close()
        old.join(0)
        self.process, self._conn = restart.process, restart.conn
        log.warning("the base policy worker was restarted in %.1f s (pid %s -> %s); the episode goes on",
                    time.monotonic() - restart.since, old.pid, self.process.pid)
        self._resend = True  # the request the dead worker never answered: sent at the next poll

    # -- teardown -----------------------------------------------------------------------------------
    @staticmethod
    def _stop_worker(process: Any, conn: Any) -> None:
        """Ask ``process`` to stop (its pipe), then terminate or kill it; close the pipe. Idempotent."""
        if conn.closed:
            return
        try:
            conn.send_bytes(b"stop")
        except (OSError, ValueError):
            pass
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
            process.join(timeout=2)
        if process.is_alive():
            process.kill()
            process.join(timeout=2)
        conn.close()

    def close(self) -> None:
        """Close the link, then stop (or kill) the worker process, and one being restarted."""
        try:
            super().close()
        finally:
            restart, self._restart = self._restart, None
            if restart is not None:
                restart.cancel.set()
                if restart.thread is not None:
                    restart.thread.join(timeout=10)
                if restart.process is not None and restart.error is None:
                    self._stop_worker(restart.process, restart.conn)
            if self.process.pid is not None:
                self._stop_worker(self.process, self._conn)


def check_observation_schema(info: dict[str, Any], robot: Any, where: str) -> None:
    """Raise PolicyLoadError unless the robot observes everything the served policy expects, as it expects."""
    have = {k: [f.dtype, list(f.shape)] for k, f in robot.observation_features.items()}
    for key, spec in info.get("observation", {}).items():
        if have.get(key) != list(spec):
            raise PolicyLoadError(
                f"the policy served at {where} expects {key} as {spec[0]}{spec[1]} but this robot gives "
                f"{'nothing' if key not in have else have[key][0] + str(have[key][1])}; serve it with this "
                "robot's config (same robot.* overrides on both machines)"
            )


def make_link_backend(kind: str, run_config: Any, robot: Any) -> tuple[LinkBackend, PolicyProxy]:
    """The backend for ``session.backend`` "process" or "remote" and a proxy holding the policy's sizes.

    Raises:
        PolicyLoadError: the policy could not be started or reached, or its observation schema is not the robot's.
    """
    link: PolicyLinkConfig = getattr(run_config, "policy_link", None) or PolicyLinkConfig()
    if kind == "process":
        backend: LinkBackend = ProcessBackend(run_config.robot, run_config.policy, link)
    elif kind == "remote":
        backend = RemoteBackend(link)
    else:
        raise ValueError(f"kind={kind!r}: one of 'process', 'remote'")
    try:
        check_observation_schema(backend.info, robot, backend.endpoint)
    except BaseException:
        backend.close()
        raise
    return backend, PolicyProxy(backend.info)
