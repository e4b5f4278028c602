"""``tandem bench recorder``: can the recorder keep up with N cameras of W x H pixels at ``hz``, in bounded memory?

A paced loop (the real ``TickTimer``) hands one ``TickRecord`` per tick to a real :class:`Recorder`
(spool, converter process, lerobot video encoding) for ``seconds``, in episodes of ``episode_s``.
Camera frames are not rendered live (MuJoCo on CPU cannot render two cameras at 50 Hz): ``source``
"synthetic" cycles generated frames per camera (a smooth moving scene with sensor noise; 100 frames,
fewer at large sizes so the frame source stays under about 64 MB); "metaworld" first renders 100 ticks
of MetaWorld's scripted expert (square images, ``width`` x ``width``) and cycles those. Everything after
the frame source is the production path. ``tandem bench recorder --cameras 2 --width 640 --height 480
--hz 30 --seconds 300`` is the real-camera-size run (about 27 MB/s of raw pixels per camera).

Reported: frames recorded per second of recording (``sustained_fps``), dropped ticks, the recorder's
CPU (writer thread + converter process, i.e. process CPU minus the control thread's, plus children;
converter start-up and the final drain included) as a share of one core, and the control thread's
time per tick inside the recorder (``on_tick`` p50/p99/max, ms; wall clock, and the thread's CPU time,
which excludes time the OS gave to other processes). ``load_average_1min`` shows how busy the machine
was: on a shared 2-core machine the wall-clock figures mostly measure the other load.

Memory (MiB): ``rss_before_mb`` is the bench process's resident set once the frame source is built
(``frame_source_mb`` of it) and before the recorder starts; ``rss_peak_mb`` its peak (sampled every
0.25 s from ``/proc/self/statm``, and ``ru_maxrss``, the kernel's high-water mark); ``recorder_rss_mb`` the
peak minus the start, what recording added. ``queue_bound_mb`` is the most the writer queue can hold
(``Recorder.queue_capacity`` records of ``record_mb`` each): the recorder's memory is bounded by it plus
constant overhead, whatever the session's length. ``converter_rss_peak_mb`` is the converter
process's peak (``RUSAGE_CHILDREN`` ``ru_maxrss``).
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY, Feature
from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig
from tandem.runtime.control.loop import EpisodeResult, TickRecord
from tandem.runtime.control.timing import TickTimer, percentile
from tandem.runtime.recording.dataset_store import spool_dir
from tandem.runtime.recording.recorder import RecordConfig, Recorder

#: camera names, in order (``--cameras N`` takes the first N); all are MetaWorld cameras
CAMERAS = ("corner", "topview", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
MIB = 2**20
FRAME_SOURCE_BYTES = 64 * MIB  # synthetic frames kept in memory, all cameras together (at most 100 per camera)


def camera_names(cameras: int) -> tuple[str, ...]:
    """The first ``cameras`` names of :data:`CAMERAS` (1..7)."""
    if not 1 <= cameras <= len(CAMERAS):
        raise ValueError(f"cameras={cameras}: 1..{len(CAMERAS)}")
    return CAMERAS[:cameras]


def synthetic_frames(
    cameras: int, size: int, count: int = 100, seed: int = 0, height: int | None = None
) -> list[np.ndarray]:
    """``count`` frames [count, height, size, 3] uint8 per camera: gradient, a moving disc, sensor noise.

    ``size`` is the width in pixels; ``height`` defaults to it (square frames).
    """
    width, height = size, size if height is None else height
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    base = np.stack([90 + 80 * xx, 70 + 60 * yy, 120 + 40 * xx * yy], axis=-1)
    out = []
    for cam in range(cameras):
        frames = np.empty((count, height, width, 3), np.uint8)
        for k in range(count):
            phase = 2 * np.pi * k / count + cam
            cx, cy = 0.5 + 0.3 * np.cos(phase), 0.5 + 0.3 * np.sin(phase)
            disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < 0.01
            img = base + rng.normal(0, 3, base.shape).astype(np.float32)
            img[disc] = (220, 60, 40)
            frames[k] = np.clip(img, 0, 255).astype(np.uint8)
        out.append(frames)
    return out


def metaworld_frames(size: int, count: int = 100, cameras: tuple[str, ...] = CAMERAS[:2]) -> list[np.ndarray]:
    """``count`` ticks of MetaWorld pick-place (scripted expert) rendered by ``cameras``, ``size`` x ``size``."""
    robot = MetaWorldRobot(MetaWorldRobotConfig(cameras=list(cameras), image_size=size, realtime=False))
    frames = [np.empty((count, size, size, 3), np.uint8) for _ in cameras]
    try:
        robot.connect()
        robot.reset(0)
        for k in range(count):
            obs = robot.get_observation()
            for i, cam in enumerate(cameras):
                frames[i][k] = obs[IMAGE_PREFIX + cam]
            robot.send_action(robot.expert_action())
    finally:
        robot.disconnect()
    return frames


def spool_mb(root: Path) -> float:
    """Bytes (MiB) in the recorder's spool under dataset ``root``: ticks not yet committed to the dataset."""
    total = 0
    for path in spool_dir(root).rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:  # committed (deleted) while we walk
            pass
    return total / MIB


def rss_mb() -> float:
    """This process's resident set size now (MiB), from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


class PeakRss:
    """Samples :func:`rss_mb` every ``period_s`` on a daemon thread; ``peak_mb`` is the largest seen."""

    def __init__(self, period_s: float = 0.25) -> None:
        self.period_s = period_s
        self.peak_mb = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


def bench_recorder(
    seconds: float = 60.0,
    hz: float = 50.0,
    size: int = 96,
    episode_s: float = 10.0,
    source: str = "synthetic",
    queue_size: int = 500,
    vcodec: str = RecordConfig.vcodec,
    video_encoder: str = RecordConfig.video_encoder,
    root: str | None = None,
    cameras: int = 2,
    width: int | None = None,
    height: int | None = None,
    drain_timeout_s: float = 300.0,
) -> dict:
    """Record ``seconds`` of ticks with ``cameras`` cameras of ``width`` x ``height`` pixels at ``hz``.

    ``width``/``height`` default to ``size`` (square frames; ``source="metaworld"`` renders square
    frames only). After the loop the converter gets ``drain_timeout_s`` to commit the spool; what it has
    not committed by then is reported (``spool_left_uncommitted_mb``; ``frames_recorded`` counts committed
    frames, ``spooled_ticks`` the ticks on disk). Returns the figures (JSON-ready; sizes in MiB, times
    in ms or s as named).
    """
    if source not in ("synthetic", "metaworld"):
        raise ValueError(f"source={source!r}: one of 'synthetic', 'metaworld'")
    width, height = width or size, height or size
    if width < 1 or height < 1:
        raise ValueError(f"width={width}, height={height}: positive pixel counts")
    if source == "metaworld" and width != height:
        raise ValueError("source='metaworld' renders square frames: width == height")
    names = camera_names(cameras)
    if source == "synthetic":
        count = int(max(2, min(100, FRAME_SOURCE_BYTES // (cameras * width * height * 3))))
        frames = synthetic_frames(cameras, width, count=count, height=height)
    else:
        frames = metaworld_frames(width, cameras=names)
    frame_source_mb = sum(f.nbytes for f in frames) / MIB
    obs_features = {STATE_KEY: Feature("float32", (39,))}
    obs_features.update({IMAGE_PREFIX + cam: Feature("uint8", (height, width, 3)) for cam in names})
    action = Feature("float32", (4,), names=("dx", "dy", "dz", "gripper"), low=(-1.0,) * 4, high=(1.0,) * 4)
    tmp = None if root else tempfile.mkdtemp(prefix="tandem-bench-recorder-")
    root_path = Path(root) if root else Path(tmp) / "dataset"
    config = RecordConfig(enabled=True, root=str(root_path), queue_size=queue_size, vcodec=vcodec,
                          video_encoder=video_encoder)
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
    rss_before = rss_mb()
    sampler = PeakRss()
    try:
        sampler.__enter__()
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
            for i, cam in enumerate(names):
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
        backlog_mb = spool_mb(root_path)
        stats = recorder.close(drain_timeout_s)
        close_s = time.perf_counter() - t_close
        left_mb = spool_mb(root_path)
    finally:
        recorder.close()
        proc = recorder._proc  # the converter, when it outlived drain_timeout_s: stop it before deleting its files
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        sampler.__exit__(None, None, None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    child_cpu = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
    recorder_cpu = max(0.0, self_cpu - control_cpu) + child_cpu
    timing = timer.summary().to_dict()
    frames_recorded = stats["frames_committed"]
    short = [  # committed episodes with fewer frames than the loop gave them (the last one may be a partial)
        {"episode": e["session_episode"], "length": e["length"], "torn_bytes": e.get("torn_bytes", 0)}
        for e in recorder.committed
        if e["length"] != min(per_episode, n_ticks - int(e["session_episode"]) * per_episode)
    ]
    return {
        "bench": "recorder",
        "source": source,
        "cameras": [f"{cam} {width}x{height}" for cam in names],
        "vcodec": config.vcodec,
        "video_encoder": config.video_encoder,
        "preset": config.preset,
        "raw_mb_per_s": round(cameras * width * height * 3 * hz / 1e6, 1),
        "hz": hz,
        "seconds": seconds,
        "episode_s": episode_s,
        "cpus": os.cpu_count(),
        "ticks": n_ticks,
        "frames_recorded": frames_recorded,
        "dropped": stats["dropped"],
        "sustained_fps": round(frames_recorded / loop_s, 2),
        "camera_frames_per_s": round(frames_recorded * cameras / loop_s, 2),
        "recorder_cpu_s": round(recorder_cpu, 2),
        "recorder_cpu_share": round(recorder_cpu / loop_s, 3),
        "converter_cpu_s": round(child_cpu, 2),
        # its CPU per committed tick (start-up, lerobot's import included) and its throughput over loop + drain
        "converter_cpu_ms_per_tick": round(child_cpu / frames_recorded * 1e3, 1) if frames_recorded else None,
        "converter_ticks_per_s": round(frames_recorded / (loop_s + close_s), 2),
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
        "queue_capacity": recorder.queue_capacity,
        "record_mb": round(recorder.schema.record_bytes / MIB, 3),
        "queue_bound_mb": round(recorder.queue_capacity * recorder.schema.record_bytes / MIB, 1),
        "frame_source_mb": round(frame_source_mb, 1),
        "rss_before_mb": round(rss_before, 1),
        "rss_peak_mb": round(sampler.peak_mb, 1),
        "ru_maxrss_mb": round(self1.ru_maxrss / 1024, 1),
        "recorder_rss_mb": round(sampler.peak_mb - rss_before, 1),
        "converter_rss_peak_mb": round(child1.ru_maxrss / 1024, 1),
        "drain_after_loop_s": round(close_s, 2),
        "drain_timeout_s": drain_timeout_s,
        "spooled_ticks": stats["written"],
        "spool_backlog_at_loop_end_mb": round(backlog_mb, 1),
        "spool_left_uncommitted_mb": round(left_mb, 1),
        "converter_finished": bool(frames_recorded == stats["written"] and left_mb == 0.0),
        # where a shortfall came from: committed episodes shorter than their spooled ticks, torn tails,
        # converter output that was not an event (an event lost to it would go uncounted)
        "short_episodes": short,
        "torn_bytes": stats["torn_bytes"],
        "converter_unparsed_lines": stats["converter_unparsed_lines"],
        "errors": stats["errors"],
    }
