"""Offscreen MuJoCo rendering: the OpenGL backend, and cameras rendered on a thread of their own."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np


def configure_gl() -> str:
    """Choose MuJoCo's GL backend before mujoco is imported; returns it.

    Respects an existing ``MUJOCO_GL``. Otherwise uses OSMesa (software rendering, works on any
    CPU machine with ``libosmesa6``); on a GPU machine set ``MUJOCO_GL=egl`` for speed.
    """
    backend = os.environ.setdefault("MUJOCO_GL", "osmesa")
    if backend == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    elif backend == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    return backend


class CameraThread:
    """A MuJoCo model's cameras rendered on a thread of their own, as real cameras are read.

    The control thread hands over the simulation state after each step (:meth:`publish`: a copy of
    ``qpos``, ``mocap_pos``, ``mocap_quat``, a few microseconds); the camera thread renders the newest
    state it has into images from its own ``MjData`` and its own offscreen renderer, whose GL context is
    created, used and freed on that thread (OSMesa binds a context to one thread). A state published
    while the previous one is rendering replaces the waiting one (counted in ``skipped``), as a camera
    shows only the newest scene. Like a real camera it delivers at most ``fps`` frames per second (the
    newest state at each frame time), which also bounds the CPU it takes from the control loop and the
    policy on a small machine. The control thread reads the newest frames without waiting
    (:meth:`latest`), or waits for a given state's frames (:meth:`wait_for`, on reset).

    The model is shared read-only; :meth:`paused` holds the render lock, for code that changes the
    model (a reset moving objects or goal sites).

    Args:
        model: the ``mujoco.MjModel`` (its offscreen buffer at least ``width`` x ``height``).
        cameras: camera names to render, in order.
        width: image width, pixels.
        height: image height, pixels.
        flip: flip images vertically (MetaWorld's cameras render upside down).
        name: the thread's name.
        fps: most frames per second (0: render every published state as fast as it can).
    """

    def __init__(
        self,
        model: Any,
        cameras: list[str],
        width: int,
        height: int,
        flip: bool = False,
        name: str = "cameras",
        fps: float = 0.0,
    ) -> None:
        self.model = model
        self.period_s = 1.0 / fps if fps > 0 else 0.0
        self.cameras = list(cameras)
        self.width, self.height, self.flip = int(width), int(height), bool(flip)
        self._cond = threading.Condition()
        self._render_lock = threading.Lock()
        self._pending: tuple[int, float, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._frames: dict[str, np.ndarray] = {}
        self._capture_time = 0.0
        self._frame_seq = -1
        self._seq = -1
        self._stop = False
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.rendered = 0  # states rendered
        self.skipped = 0  # states replaced by a newer one before they were rendered
        self.render_ms: list[float] = []  # wall time per rendered state (all cameras), the last 1,000

    def start(self, timeout_s: float = 60.0) -> CameraThread:
        """Start the thread and wait until its renderer exists.

        Raises:
            RuntimeError: the renderer could not be created (the thread's error is chained), or it took
                longer than ``timeout_s``.
        """
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"camera thread: no renderer after {timeout_s} s")
        if self._error is not None:
            raise RuntimeError(f"camera thread: the renderer failed: {self._error}") from self._error
        return self

    def publish(self, data: Any) -> int:
        """Hand over the state of ``data`` (an ``MjData`` of the same model) to be rendered; returns its number."""
        snapshot = (data.qpos.copy(), data.mocap_pos.copy(), data.mocap_quat.copy())
        now = time.time()
        with self._cond:
            self._seq += 1
            if self._pending is not None:
                self.skipped += 1
            self._pending = (self._seq, now, *snapshot)
            self._cond.notify_all()
            return self._seq

    def latest(self) -> tuple[dict[str, np.ndarray], float, int]:
        """The newest frames (camera -> uint8[H, W, 3]), their capture time (wall clock, s: when the state
        they show was published) and the state's number (-1: none rendered yet). Never waits."""
        with self._cond:
            self._raise_error()
            return self._frames, self._capture_time, self._frame_seq

    def wait_for(self, seq: int, timeout_s: float = 10.0) -> tuple[dict[str, np.ndarray], float, int]:
        """Wait until the frames of state ``seq`` (or a newer one) are rendered; then :meth:`latest`.

        Raises:
            TimeoutError: not rendered within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._frame_seq < seq:
                self._raise_error()
                left = deadline - time.monotonic()
                if left <= 0 or self._stop:
                    raise TimeoutError(f"camera thread: state {seq} not rendered within {timeout_s} s")
                self._cond.wait(left)
            return self._frames, self._capture_time, self._frame_seq

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No rendering while the block runs (it may change the model)."""
        with self._render_lock:
            yield

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (it frees its renderer). Safe to call twice."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"camera thread failed: {self._error}") from self._error

    def _run(self) -> None:
        import mujoco

        renderer = None
        try:
            renderer = mujoco.Renderer(self.model, height=self.height, width=self.width)  # GL context: this thread
            data = mujoco.MjData(self.model)
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        next_frame = 0.0  # monotonic time of the next frame (the fps limit)
        try:
            while True:
                with self._cond:
                    while not self._stop:
                        wait = next_frame - time.monotonic()
                        if self._pending is not None and wait <= 0:
                            break
                        self._cond.wait(wait if wait > 0 else None)
                    if self._stop:
                        return
                    seq, when, qpos, mocap_pos, mocap_quat = self._pending
                    self._pending = None
                t0 = time.perf_counter()
                if self.period_s:
                    next_frame = max(next_frame + self.period_s, time.monotonic())
                with self._render_lock:
                    data.qpos[:] = qpos
                    data.mocap_pos[:] = mocap_pos
                    data.mocap_quat[:] = mocap_quat
                    mujoco.mj_kinematics(self.model, data)
                    mujoco.mj_camlight(self.model, data)
                    frames = {}
                    for cam in self.cameras:
                        renderer.update_scene(data, camera=cam)
                        image = renderer.render()
                        frames[cam] = np.ascontiguousarray(image[::-1]) if self.flip else image
                self.render_ms.append((time.perf_counter() - t0) * 1e3)
                if len(self.render_ms) > 1000:
                    del self.render_ms[:500]
                with self._cond:
                    self._frames, self._capture_time, self._frame_seq = frames, when, seq
                    self.rendered += 1
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - raised in the control thread by latest()/wait_for()
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            if renderer is not None:
                renderer.close()
