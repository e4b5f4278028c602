"""``tandem bench recorder``: can the recorder keep up with two 96x96 cameras at 50 Hz?

A paced loop (the real ``TickTimer``) hands one ``TickRecord`` per tick to a real :class:`Recorder`
(spool, converter process, lerobot video encoding) for ``seconds``, in episodes of ``episode_s``.
Camera frames are not rendered live (MuJoCo on CPU cannot render two cameras at 50 Hz): ``source``
"synthetic" cycles 100 generated frames per camera (a smooth moving scene with sensor noise);
"metaworld" first renders 100 ticks of MetaWorld's scripted expert with cameras corner and topview
and cycles those. Everything after the frame source is the production path.

Reported: frames recorded per second of recording (``sustained_fps``), dropped ticks, the recorder's
CPU (writer thread + converter process, i.e. process CPU minus the control thread's, plus children;
converter start-up and the final drain included) as a share of one core, and the control thread's
time per tick inside the recorder (``on_tick`` p50/p99/max, ms; wall clock, and the thread's CPU time,
which excludes time the OS gave to other processes). ``load_average_1min`` shows how busy the machine
was: on a shared 2-core machine the wall-clock figures mostly measure the other load.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY, Feature
from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig
from tandem.runtime.control.loop import EpisodeResult, TickRecord
from tandem.runtime.control.timing import TickTimer, percentile
from tandem.runtime.recording.recorder import RecordConfig, Recorder

CAMERAS = ("corner", "topview")


def synthetic_frames(cameras: int, size: int, count: int = 100, seed: int = 0) -> list[np.ndarray]:
    """``count`` frames [count, size, size, 3] uint8 per camera: gradient, a moving disc, sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for cam in range(cameras):
        frames = np.empty((count, size, size, 3), np.uint8)
        for k in range(count):
            phase = 2 * np.pi * k / count + cam
            cx, cy = 0.5 + 0.3 * np.cos(phase), 0.5 + 0.3 * np.sin(phase)
            disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < 0.01
            img = np.stack([90 + 80 * xx, 70 + 60 * yy, 120 + 40 * xx * yy], axis=-1)
            img[disc] = (220, 60, 40)
            img += rng.normal(0, 3, img.shape)
            frames[k] = np.clip(img, 0, 255).astype(np.uint8)
        out.append(frames)
    return out


def metaworld_frames(size: int, count: int = 100) -> list[np.ndarray]:
    """``count`` ticks of MetaWorld pick-place (scripted expert) rendered by cameras corner and topview."""
    robot = MetaWorldRobot(MetaWorldRobotConfig(cameras=list(CAMERAS), image_size=size, realtime=False))
    frames = [np.empty((count, size, size, 3), np.uint8) for _ in CAMERAS]
    try:
        robot.connect()
        robot.reset(0)
        for k in range(count):
            obs = robot.get_observation()
            for i, cam in enumerate(CAMERAS):
                frames[i][k] = obs[IMAGE_PREFIX + cam]
            robot.send_action(robot.expert_action())
    finally:
        robot.disconnect()
    return frames


def bench_recorder(
    seconds: float = 60.0,
    hz: float = 50.0,
    size: int = 96,
    episode_s: float = 10.0,
    source: str = "synthetic",
    queue_size: int = 500,
    vcodec: str = "libsvtav1",
    root: str | None = None,
) -> dict:
    """Record ``seconds`` of ticks with two ``size`` x ``size`` cameras at ``hz``; return the figures."""
    if source not in ("synthetic", "metaworld"):
        raise ValueError(f"source={source!r}: one of 'synthetic', 'metaworld'")
    frames = synthetic_frames(len(CAMERAS), size) if source == "synthetic" else metaworld_frames(size)
    obs_features = {STATE_KEY: Feature("float32", (39,))}
    obs_features.update({IMAGE_PREFIX + cam: Feature("uint8", (size, size, 3)) for cam in CAMERAS})
    action = Feature("float32", (4,), names=("dx", "dy", "dz", "gripper"), low=(-1.0,) * 4, high=(1.0,) * 4)
    tmp = None if root else tempfile.mkdtemp(prefix="tandem-bench-recorder-")
    root_path = Path(root) if root else Path(tmp) / "dataset"
    config = RecordConfig(enabled=True, root=str(root_path), queue_size=queue_size, vcodec=vcodec)
    recorder = Recorder(config, obs_features, action, fps=hz, robot_type="bench")
    rng = np.random.default_rng(0)
    state = rng.normal(size=39).astype(np.float32)
    zeros = np.zeros(4, np.float32)
    n_ticks = int(round(seconds * hz))
    per_episode = max(1, int(round(episode_s * hz)))
    on_tick_ms: list[float] = []
    on_tick_cpu_ms: list[float] = []  # CPU time of the control thread in on_tick (wall minus preemption)
    edge_ms: list[float] = []
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        recorder.start()
        timer = TickTimer(hz)
        control_cpu0 = time.thread_time()
        t_loop = time.perf_counter()
        timer.start()
        episode, tick = 0, 0
        for k in range(n_ticks):
            if tick == 0:
                t = time.perf_counter()
                recorder.start_episode(episode, "bench: pick up the puck")
                edge_ms.append((time.perf_counter() - t) * 1e3)
            last = tick == per_episode - 1 or k == n_ticks - 1
            now = time.time()
            observation = {STATE_KEY: state}
            for i, cam in enumerate(CAMERAS):
                observation[IMAGE_PREFIX + cam] = frames[i][k % len(frames[i])]
            record = TickRecord(
                episode=episode, tick=tick, observation=observation, base_action=zeros, head_action=zeros,
                action=zeros, is_intervention=False, takeover_start=False, starved=False,
                chunk_index=tick // 10, chunk_step=tick % 10, head_version=0, base_version=0,
                features=np.zeros(0, np.float16), reward=0.0, success=False, done=False, truncated=last,
                obs_time=now, send_time=now, lateness_ms=timer.lateness_ms[-1] if timer.lateness_ms else 0.0,
            )  # fmt: skip
            c, t = time.thread_time(), time.perf_counter()
            recorder.on_tick(record)
            on_tick_ms.append((time.perf_counter() - t) * 1e3)
            on_tick_cpu_ms.append((time.thread_time() - c) * 1e3)
            tick += 1
            if last:
                t = time.perf_counter()
                recorder.end_episode(EpisodeResult(episode, None, tick, False, "timeout", 0.0, 0, 0, 0))
                edge_ms.append((time.perf_counter() - t) * 1e3)
                episode, tick = episode + 1, 0
            if k < n_ticks - 1:
                timer.wait()
        loop_s = time.perf_counter() - t_loop
        control_cpu = time.thread_time() - control_cpu0
        t_close = time.perf_counter()
        stats = recorder.close()
        close_s = time.perf_counter() - t_close
    finally:
        recorder.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    child_cpu = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
    recorder_cpu = max(0.0, self_cpu - control_cpu) + child_cpu
    timing = timer.summary().to_dict()
    frames_recorded = stats["frames_committed"]
    return {
        "bench": "recorder",
        "source": source,
        "cameras": [f"{cam} {size}x{size}" for cam in CAMERAS],
        "hz": hz,
        "seconds": seconds,
        "episode_s": episode_s,
        "cpus": os.cpu_count(),
        "ticks": n_ticks,
        "frames_recorded": frames_recorded,
        "dropped": stats["dropped"],
        "sustained_fps": round(frames_recorded / loop_s, 2),
        "camera_frames_per_s": round(frames_recorded * len(CAMERAS) / loop_s, 2),
        "recorder_cpu_s": round(recorder_cpu, 2),
        "recorder_cpu_share": round(recorder_cpu / loop_s, 3),
        "converter_cpu_s": round(child_cpu, 2),
        "on_tick_p50_ms": round(percentile(on_tick_ms, 50), 4),
        "on_tick_p99_ms": round(percentile(on_tick_ms, 99), 4),
        "on_tick_max_ms": round(max(on_tick_ms, default=0.0), 4),
        "on_tick_cpu_p50_ms": round(percentile(on_tick_cpu_ms, 50), 4),
        "on_tick_cpu_p99_ms": round(percentile(on_tick_cpu_ms, 99), 4),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "episode_edge_max_ms": round(max(edge_ms, default=0.0), 4),
        "loop_p99_lateness_ms": timing["p99_lateness_ms"],
        "loop_overruns": timing["overruns"],
        "queue_high_water": stats["queue_high_water"],
        "drain_after_loop_s": round(close_s, 2),
        "errors": stats["errors"],
    }
