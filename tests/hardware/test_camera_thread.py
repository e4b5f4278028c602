"""Simulated cameras render on a thread of their own, as real cameras are read (issue #23).

Real MuJoCo, real OSMesa rendering. A paced MetaWorld robot renders its cameras on a ``cameras-<task>``
thread from snapshots of the state; ``get_observation`` returns the newest frames without waiting for a
render; ``capture_time()`` says when the state they show was produced, and the control loop puts it in
every tick record. Simulated time (``realtime=False``) keeps rendering inside ``get_observation``.
"""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest

from tandem.core.errors import ConfigError
from tandem.hardware.features import IMAGE_PREFIX
from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig
from tandem.runtime.config import compose_run
from tandem.runtime.session import Session

CAMS = ["corner", "topview"]


def reference_frames(robot: MetaWorldRobot, size: int) -> dict[str, np.ndarray]:
    """The current state rendered on this thread by a renderer of its own (what the camera should show)."""
    import mujoco

    env = robot._env.unwrapped
    data = copy.copy(env.data)
    mujoco.mj_forward(env.model, data)
    renderer = mujoco.Renderer(env.model, height=size, width=size)
    try:
        out = {}
        for cam in CAMS:
            renderer.update_scene(data, camera=cam)
            out[cam] = np.ascontiguousarray(renderer.render()[::-1])
        return out
    finally:
        renderer.close()


def camera_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("cameras-")]


def test_paced_robot_renders_on_its_own_thread_without_blocking_the_read():
    size = 64
    robot = MetaWorldRobot(MetaWorldRobotConfig(task="reach-v3", cameras=CAMS, image_size=size, realtime=True,
                                                camera_fps=0))
    try:
        robot.connect()
        camera = robot.camera_thread
        assert camera is not None
        assert camera_threads() == ["cameras-reach-v3"]
        before = time.time()
        robot.reset(seed=5)
        obs = robot.get_observation()
        first_capture = robot.capture_time()
        assert before <= first_capture <= time.time()
        # after a reset the frames show the new scene: the same pixels as a render of the current state
        want = reference_frames(robot, size)
        for cam in CAMS:
            got = obs[IMAGE_PREFIX + cam]
            assert got.shape == (size, size, 3) and got.dtype == np.uint8
            assert np.array_equal(got, want[cam]), cam

        # move the arm; reads never wait for a render
        read_ms = []
        for _ in range(40):
            robot.send_action(np.array([1.0, 0.0, 0.5, 0.0], np.float32))
            t0 = time.perf_counter()
            robot.get_observation()
            read_ms.append((time.perf_counter() - t0) * 1e3)
        assert camera.rendered >= 2
        assert camera.rendered + camera.skipped >= 40  # every published state rendered or replaced by a newer one
        assert np.median(read_ms) < np.median(camera.render_ms)
        assert np.median(read_ms) < 1.0

        # the newest state's frames, once rendered, differ from the reset frames (the arm moved), are newer,
        # and equal a render of the current state
        seq = camera.publish(robot._env.unwrapped.data)
        camera.wait_for(seq)
        obs2 = robot.get_observation()
        assert robot.capture_time() > first_capture
        assert not np.array_equal(obs2[IMAGE_PREFIX + "corner"], obs[IMAGE_PREFIX + "corner"])
        want = reference_frames(robot, size)
        assert np.array_equal(obs2[IMAGE_PREFIX + "corner"], want["corner"])
    finally:
        robot.disconnect()
    deadline = time.monotonic() + 5
    while camera_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert camera_threads() == []


def test_the_camera_renders_at_most_its_frame_rate():
    """States published at about 100 Hz for 1 s to a 10 fps camera: at most about 11 frames rendered."""
    cfg = MetaWorldRobotConfig(task="reach-v3", cameras=["corner"], image_size=32, realtime=True, camera_fps=10)
    with MetaWorldRobot(cfg) as robot:
        robot.reset(seed=2)
        camera = robot.camera_thread
        start, t0 = camera.rendered, time.monotonic()
        while time.monotonic() - t0 < 1.0:
            robot.send_action(np.array([0.5, 0.0, 0.0, 0.0], np.float32))
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        rendered = camera.rendered - start
        assert 1 <= rendered <= elapsed * 10 + 2, (rendered, elapsed)
        assert camera.skipped > 0
    with pytest.raises(ConfigError, match="robot.camera_fps"):
        MetaWorldRobotConfig(camera_fps=-1)


def test_simulated_time_renders_in_the_read_and_a_thread_can_be_turned_off():
    for cfg in (MetaWorldRobotConfig(task="reach-v3", cameras=["corner"], image_size=32, realtime=False),
                MetaWorldRobotConfig(task="reach-v3", cameras=["corner"], image_size=32, render_thread=False)):
        with MetaWorldRobot(cfg) as robot:
            robot.reset(seed=1)
            obs = robot.get_observation()
            assert robot.camera_thread is None and camera_threads() == []
            assert robot.capture_time() is None
            assert obs[IMAGE_PREFIX + "corner"].shape == (32, 32, 3)
    with pytest.raises(ConfigError, match="robot.render_thread"):
        MetaWorldRobotConfig(render_thread="yes")


def test_paced_session_records_each_frames_capture_time_and_age():
    """A 50 Hz session with a camera: each tick's capture time is the frame's (older than the read, by a
    bounded age), never later than the tick's observation time."""
    ticks = []

    class Sink:
        def start_episode(self, episode, task):
            pass

        def on_tick(self, record):
            ticks.append((record.obs_time, record.capture_time, record.send_time))

        def end_episode(self, result):
            pass

    cfg = compose_run(["policy=scripted", "robot.task=reach-v3", "robot.realtime=true", "robot.cameras=[corner]",
                       "robot.image_size=48", "session.episodes=1", "robot.max_episode_steps=60",
                       "loop.stop_on_success=false", "record.enabled=false"])
    Session(cfg, sinks=[Sink()]).run()
    assert len(ticks) == 60
    obs_time, capture, send = (np.array(c) for c in zip(*ticks, strict=True))
    age = obs_time - capture
    assert np.all(capture <= obs_time + 1e-6)
    assert np.all(np.diff(capture) >= 0)  # frames never go back in time
    assert np.all(send >= capture)
    assert np.median(age) > 0  # the frame shows a state from before the read (the last step's)
    assert np.median(age) < 1.0
