"""A live view of a robot session in the Rerun viewer (rerun-sdk, lerobot's own viewer dependency).

:class:`LiveView` is a TickSink. The control thread only copies what it needs out of each tick into a
small bounded queue (``on_tick``: a few microseconds, never blocks, never writes anything); a background
thread does all the Rerun logging. When the queue is full the *oldest* queued item is dropped (the view
stays current) and counted in ``stats()["dropped"]``.

Timelines (every entity is logged on all four):

- ``tick``: session-wide tick counter (0, 1, 2, ... across episodes; plots read left to right),
- ``episode``: episode index, ``episode_tick``: the tick within the episode (``TickRecord.tick``),
- ``time``: the tick's observation wall-clock time.

Entity paths:

================================  ==========================================================================
``camera/<name>``                 camera image ``observation.images.<name>`` (uint8[H, W, 3]), every
                                  ``image_every``-th tick
``action/base/<i>``               base policy's action, dimension i (robot units, before head and safety)
``action/head/<i>``               edit head's correction, dimension i
``action/executed/<i>``           action sent to the robot (after the safety filter), dimension i
``critic/value``                  critic's value of the current chunk (only when known; see ``value_fn``)
``takeover/active``               1 while the operator is in control (``is_intervention``), else 0
``head/version``                  weights version of the edit head that produced the tick's action
``loop/lateness_ms``              control-loop lateness of the tick, ms
``loop/starved``                  1 if the tick ran without a fresh chunk (hold / stale action), else 0
``episode/reward``                per-tick reward reported by the robot / task
``episode/success``               1 once the task reports success at this tick, else 0
``episode/events``                text log: episode starts (task) and ends (outcome, steps, reward)
================================  ==========================================================================

Modes (``LiveViewConfig.mode``): "spawn" starts the viewer app (needs a display and the ``rerun``
binary); "save" writes an ``.rrd`` file (open it later with ``rerun FILE.rrd``); "connect" streams to a
viewer already running at ``address`` (e.g. on a laptop: ``rerun`` there, then
``address=rerun+http://LAPTOP:9876/proxy``); "memory" keeps the recording in memory (tests: read it
with :meth:`LiveView.drain_rrd`). The view uses its own ``rr.RecordingStream``, never the global one.

Usage::

    view = LiveView(LiveViewConfig(enabled=True, mode="save", path="runs/x/live.rrd")).start()
    try:
        run_episode(..., sinks=[view])
    finally:
        view.close()
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.core.errors import ConfigError, DeviceMissingError
from tandem.core.validate import in_range, one_of, positive
from tandem.runtime.control.loop import EpisodeResult, TickRecord

log = logging.getLogger(__name__)

MODES = ("spawn", "save", "connect", "memory")
IMAGE_PREFIX = "observation.images."
_URL_SCHEMES = ("rerun://", "rerun+http://", "rerun+https://")


@dataclass
class LiveViewConfig:
    """The live view (the ``display`` block of a run config).

    Attributes:
        enabled: log the session to Rerun.
        mode: "spawn" (start the viewer app), "save" (write ``path``), "connect" (stream to a running
            viewer at ``address``) or "memory" (in-memory recording, for tests).
        path: the ``.rrd`` file written in "save" mode (parent directories are created).
        address: the viewer's gRPC address in "connect" mode: ``rerun+http://HOST:PORT/proxy`` or the
            shorthand ``HOST:PORT``.
        port: the port the spawned viewer listens on ("spawn" mode).
        image_every: log camera images every N-th tick (1: every tick); scalars are logged every tick.
        queue_size: ticks buffered between the control thread and the logging thread; when full the
            oldest is dropped and counted.
        app_id: Rerun application id (the recording's name in the viewer).
        close_timeout_s: at close, wait at most this long for the queue to drain and data to flush.
    """

    enabled: bool = False
    mode: str = "spawn"
    path: str = ""
    address: str = "rerun+http://127.0.0.1:9876/proxy"
    port: int = 9876
    image_every: int = 1
    queue_size: int = 256
    app_id: str = "tandem"
    close_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        one_of("live_view.mode", self.mode, MODES)
        if self.enabled and self.mode == "save" and not self.path:
            raise ConfigError("live_view.path", self.path, "set an .rrd file to write when live_view.mode=save")
        if self.mode == "connect":
            grpc_url(self.address)  # raises ConfigError when malformed
        in_range("live_view.port", self.port, 1, 65535)
        in_range("live_view.image_every", self.image_every, 1, 1_000_000)
        in_range("live_view.queue_size", self.queue_size, 1, 1_000_000)
        if not self.app_id:
            raise ConfigError("live_view.app_id", self.app_id, "must be a non-empty name")
        positive("live_view.close_timeout_s", self.close_timeout_s)


def grpc_url(address: str) -> str:
    """The viewer URL for ``address``: a ``rerun[+http[s]]://HOST:PORT/proxy`` URL as is, or ``HOST:PORT``."""
    if address.startswith(_URL_SCHEMES):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            "live_view.address",
            address,
            "a viewer URL rerun+http://HOST:PORT/proxy or HOST:PORT (e.g. 127.0.0.1:9876)",
        )
    return f"rerun+http://{host}:{port}/proxy"


def viewer_executable() -> str | None:
    """Path of the ``rerun`` viewer binary: on PATH, else next to this Python (a virtualenv's bin/)."""
    found = shutil.which("rerun")
    if found:
        return found
    sibling = Path(sys.executable).parent / "rerun"
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else None


def check_can_spawn() -> str:
    """The viewer binary's path, or raise DeviceMissingError saying how to save and open an .rrd instead."""
    advice = "use live_view.mode=save live_view.path=FILE.rrd and open it with `rerun FILE.rrd`"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise DeviceMissingError(
            f"live_view.mode=spawn needs a display to open the Rerun viewer, and DISPLAY/WAYLAND_DISPLAY are "
            f"unset (headless machine or ssh without -X); {advice}, or live_view.mode=connect to a viewer "
            f"running elsewhere"
        )
    exe = viewer_executable()
    if exe is None:
        raise DeviceMissingError(
            f"the Rerun viewer binary `rerun` was not found (pip install rerun-sdk); {advice}"
        )
    return exe


@dataclass
class _Tick:
    """What the logging thread needs from one tick (copies; nothing shared with the control thread)."""

    step: int
    episode: int
    tick: int
    obs_time: float
    base: np.ndarray
    head: np.ndarray
    executed: np.ndarray
    intervention: bool
    starved: bool
    head_version: int
    reward: float
    success: bool
    lateness_ms: float
    value: float | None
    images: dict[str, np.ndarray] | None


@dataclass
class _Event:
    """An episode start or end, as a line of text."""

    step: int
    episode: int
    text: str


class LiveView:
    """A TickSink that streams a session to the Rerun viewer from a background thread.

    Args:
        config: LiveViewConfig.
        value_fn: returns the critic's value of the current chunk (or None when unknown); called on the
            control thread once per tick, so it must be cheap (e.g. return an attribute). A ``value``
            attribute on the TickRecord, when present and not None, takes precedence.

    Call :meth:`start` before the first episode and :meth:`close` at the end (``finally``).
    """

    def __init__(self, config: LiveViewConfig, value_fn: Callable[[], float | None] | None = None) -> None:
        self.config = config
        self.value_fn = value_fn
        self._queue: collections.deque = collections.deque(maxlen=config.queue_size)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rec: Any = None
        self._memory: Any = None
        self._step = 0
        self._closed = False
        # counters (each written by one thread; read anywhere)
        self.ticks = 0
        self.dropped = 0
        self.logged = 0
        self.images_logged = 0
        self.queue_high_water = 0
        self.value_errors = 0
        self.errors: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LiveView:
        """Open the recording (spawn / save / connect / memory) and start the logging thread.

        Raises DeviceMissingError in "spawn" mode when there is no display or no viewer binary.
        """
        import rerun as rr

        cfg = self.config
        exe = check_can_spawn() if cfg.mode == "spawn" else None
        rec = rr.RecordingStream(cfg.app_id, recording_id=uuid.uuid4())
        if cfg.mode == "save":
            path = Path(cfg.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            rec.save(path)
        elif cfg.mode == "connect":
            rec.connect_grpc(grpc_url(cfg.address))
        elif cfg.mode == "memory":
            self._memory = rec.memory_recording()
        else:
            import rerun_bindings

            try:
                rerun_bindings.spawn(
                    port=cfg.port, executable_path=exe, extra_env=[("RERUN_APP_ONLY", "true")]
                )
            except Exception as exc:  # the binding raises plain exceptions with the OS's reason
                raise DeviceMissingError(
                    f"could not start the Rerun viewer ({exe}): {exc}; use live_view.mode=save "
                    f"live_view.path=FILE.rrd and open it with `rerun FILE.rrd`"
                ) from exc
            rec.connect_grpc(f"rerun+http://127.0.0.1:{cfg.port}/proxy")
        self._rec = rec
        self._thread = threading.Thread(target=self._run, name="live-view", daemon=True)
        self._thread.start()
        return self

    def close(self) -> dict:
        """Log what is queued (up to ``close_timeout_s``), flush, close the file / connection. :meth:`stats`.

        Safe to call twice, and without :meth:`start`. In "memory" mode the data stays readable with
        :meth:`drain_rrd`.
        """
        if self._closed:
            return self.stats()
        self._closed = True
        timeout = self.config.close_timeout_s
        try:
            if self._thread is not None:
                self._stop.set()
                self._wake.set()
                self._thread.join(timeout)
                if self._thread.is_alive():
                    log.warning("live view: logging thread still busy after %.1f s; leaving it", timeout)
        finally:
            rec = self._rec
            if rec is not None:
                try:
                    rec.flush(timeout_sec=timeout)
                except Exception as exc:  # a viewer that went away: nothing left to save
                    self.errors.append(f"flush: {exc}")
                if self.config.mode != "memory":
                    rec.disconnect()
        if self.dropped:
            log.warning("live view: dropped %d of %d ticks (viewer too slow)", self.dropped, self.ticks)
        return self.stats()

    def drain_rrd(self) -> bytes:
        """In "memory" mode: the .rrd bytes logged since the last drain (load with ``rerun.dataframe``)."""
        if self._memory is None:
            raise RuntimeError("drain_rrd() needs live_view.mode=memory and start()")
        return self._memory.drain_as_bytes()

    # -- TickSink -------------------------------------------------------------------------------
    def start_episode(self, episode: int, task: str) -> None:
        """An episode begins (queued as an event line)."""
        self._put(_Event(self._step, episode, f"episode {episode} start: {task}"))

    def on_tick(self, record: TickRecord) -> None:
        """Copy what the view needs and queue it; never blocks. A full queue drops its oldest item."""
        step = self._step
        self._step = step + 1
        self.ticks += 1
        images = None
        if step % self.config.image_every == 0:
            images = {
                key[len(IMAGE_PREFIX) :]: np.array(value, copy=True)
                for key, value in record.observation.items()
                if key.startswith(IMAGE_PREFIX)
            }
        self._put(
            _Tick(
                step=step,
                episode=record.episode,
                tick=record.tick,
                obs_time=record.obs_time,
                base=np.array(record.base_action, np.float32, copy=True),
                head=np.array(record.head_action, np.float32, copy=True),
                executed=np.array(record.action, np.float32, copy=True),
                intervention=bool(record.is_intervention),
                starved=bool(record.starved),
                head_version=int(record.head_version),
                reward=float(record.reward),
                success=bool(record.success),
                lateness_ms=float(record.lateness_ms),
                value=self._value(record),
                images=images,
            )
        )

    def end_episode(self, result: EpisodeResult) -> None:
        """The episode ended (queued as an event line with its outcome)."""
        text = (
            f"episode {result.episode} end: {result.outcome}, {result.steps} steps, reward "
            f"{result.total_reward:.2f}, takeovers {result.takeovers}"
        )
        self._put(_Event(max(self._step - 1, 0), result.episode, text))

    def _value(self, record: TickRecord) -> float | None:
        value = getattr(record, "value", None)
        if value is None and self.value_fn is not None:
            try:
                value = self.value_fn()
            except Exception as exc:  # the view must never break the loop
                self.value_errors += 1
                if self.value_errors == 1:
                    log.warning("live view: value_fn raised %s: %s", type(exc).__name__, exc)
                return None
        return None if value is None else float(value)

    def _put(self, item: _Tick | _Event) -> None:
        queue = self._queue
        if len(queue) >= self.config.queue_size:
            self.dropped += 1  # the deque drops its oldest item on append
        queue.append(item)
        depth = len(queue)
        if depth > self.queue_high_water:
            self.queue_high_water = depth
        self._wake.set()

    # -- logging thread -------------------------------------------------------------------------
    def _run(self) -> None:
        import rerun as rr

        queue = self._queue
        deadline: float | None = None
        while True:
            self._wake.wait(0.1)
            self._wake.clear()
            stopping = self._stop.is_set()
            if stopping and deadline is None:
                deadline = time.monotonic() + self.config.close_timeout_s
            while queue:
                if deadline is not None and time.monotonic() > deadline:
                    return  # close() gives up waiting; what is left is not logged
                try:
                    item = queue.popleft()
                except IndexError:
                    break
                try:
                    self._log(rr, item)
                except Exception as exc:  # a bad frame or a closed sink: report, keep going
                    if len(self.errors) < 20:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                    if len(self.errors) == 1:
                        log.warning("live view: logging failed: %s", exc)
                time.sleep(0)  # hand the GIL to the control thread if it waits: holds stay ~1 tick's logging
            if stopping:
                return

    def _set_time(self, item: _Tick | _Event) -> None:
        rec = self._rec
        rec.set_time("tick", sequence=item.step)
        rec.set_time("episode", sequence=item.episode)
        if isinstance(item, _Tick):
            rec.set_time("episode_tick", sequence=item.tick)
            rec.set_time("time", timestamp=item.obs_time)

    def _log(self, rr: Any, item: _Tick | _Event) -> None:
        rec = self._rec
        self._set_time(item)
        if isinstance(item, _Event):
            rec.log("episode/events", rr.TextLog(item.text))
            return
        if item.images:
            for name, image in item.images.items():
                rec.log(f"camera/{name}", rr.Image(image))
                self.images_logged += 1
        for group, values in (("base", item.base), ("head", item.head), ("executed", item.executed)):
            for i, v in enumerate(values.tolist()):
                rec.log(f"action/{group}/{i}", rr.Scalars(v))
        if item.value is not None:
            rec.log("critic/value", rr.Scalars(item.value))
        rec.log("takeover/active", rr.Scalars(float(item.intervention)))
        rec.log("head/version", rr.Scalars(float(item.head_version)))
        rec.log("loop/lateness_ms", rr.Scalars(item.lateness_ms))
        rec.log("loop/starved", rr.Scalars(float(item.starved)))
        rec.log("episode/reward", rr.Scalars(item.reward))
        rec.log("episode/success", rr.Scalars(float(item.success)))
        self.logged += 1

    # -- reporting ------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters: ticks seen / dropped / logged, images logged, queue high water, errors (JSON-ready)."""
        return {
            "mode": self.config.mode,
            "path": self.config.path if self.config.mode == "save" else "",
            "ticks": self.ticks,
            "dropped": self.dropped,
            "logged": self.logged,
            "images_logged": self.images_logged,
            "queue_high_water": self.queue_high_water,
            "value_errors": self.value_errors,
            "errors": list(self.errors),
        }


def make_live_view(
    config: LiveViewConfig, value_fn: Callable[[], float | None] | None = None
) -> LiveView | None:
    """A started LiveView when ``config.enabled``, else None."""
    if not config.enabled:
        return None
    return LiveView(config, value_fn).start()
