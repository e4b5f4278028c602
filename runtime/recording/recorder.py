"""The episode recorder: every tick into a LeRobotDataset, crash-safe.

Data path::

    control thread           writer thread                   converter process (niced)
    on_tick: pack a copy --> bounded queue --> spool (append, --> LeRobotDataset episode (lerobot's
    (~20 us, never blocks)                      fsync <= flush_s)  writer, video encoding), commit

- :meth:`Recorder.on_tick` copies the tick into one preallocated-layout record and puts it on a bounded
  queue without blocking. If the queue is full the tick is dropped and counted (``stats()["dropped"]``,
  a warning per episode, ``dropped_ticks`` in the episode's entry); nothing is dropped silently.
- The writer thread appends records to the episode's spool (``tandem.runtime.recording.tick_spool``) as they
  arrive and fsyncs at least every ``flush_s``. A killed process keeps every record already written.
- When an episode ends, the converter process (``tandem.runtime.recording.dataset_store``) turns it into a
  dataset episode with lerobot's ``add_frame``/``save_episode`` and commits it. On start, it first rolls
  the dataset back to its last commit and converts what an earlier, killed session left in the spool,
  the interrupted episode up to its last record included. ``tandem recover DIR`` does the same by hand.

Per-frame features: the robot's observation (``observation.state``, ``observation.images.<cam>`` as
videos), ``action`` (executed, after the safety filter), ``base_action``, ``head_action``,
``is_intervention``, ``takeover_start``, ``starved``, ``success``, ``done``, ``truncated``, ``tick``,
``chunk_index``, ``chunk_step``, ``head_version``, ``base_version``, ``reward``, ``tick_lateness_ms``,
``wall_time`` (= ``obs_time``), ``obs_time``, ``send_time``, ``capture_time`` (float64 wall clock, s;
``capture_time`` is when the sensors captured the observation: the oldest camera frame where the robot
stamps its frames, else when the read returned; a frame's age at the send is ``send_time - capture_time``) and
``policy_features`` (float32[F], only if the base policy has F > 0 features). The task string is the
language instruction. The episode outcome is in ``meta/tandem_episodes.jsonl`` (one JSON object per
dataset episode: ``outcome`` success/failure/timeout/stopped, or "interrupted" for an episode whose
process died, recovered up to its last spooled tick and its last frame marked ``truncated``). A
re-recorded episode (outcome "rerecord") is spooled like any other, then discarded by the converter
instead of converted (``stats()["episodes_rerecorded"]``): the dataset never holds it and its episode
indices stay contiguous. lerobot's torch
transform casts float64 to float32 (``ds[i]``); read ``ds.hf_dataset.with_format(None)`` for exact
times. Chunk records are rebuilt from a dataset by ``tandem.runtime.links.from_dataset.load_chunk_records``.

``tandem run`` records every session by default, into ``<run_dir>/dataset`` (``record.enabled=false``
turns it off; ``record.root`` chooses another directory). A dataset from the command line (e.g. scripted
expert demonstrations)::

    tandem run policy=scripted robot.realtime=false session.episodes=50 record.root=data/demos

    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    ds = LeRobotDataset("local/demos", root="data/demos")

Running again with the same ``record.root`` appends episodes (the features must match); only one
session records into a dataset at a time. In code: ``Recorder(...).start()``, pass it to the loop as a
sink, ``close()`` in ``finally`` (``Session`` does this when ``record.enabled``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.core.errors import ConfigError
from tandem.core.validate import in_range, one_of, positive
from tandem.hardware.features import Feature
from tandem.runtime.control.loop import EpisodeResult, TickRecord
from tandem.runtime.recording.dataset_store import (
    INFO_PATH,
    LEROBOT_IMPLICIT_FEATURES,
    Journal,
    acquire_session_lock,
    default_repo_id,
    spool_dir,
    state_dir,
)
from tandem.runtime.recording.tick_spool import (
    SpoolEpisodeWriter,
    SpoolSchema,
    episode_name,
    list_spool,
    parse_name,
    queue_capacity,
)
from tandem.runtime.recording.video_encoder import check_preset

log = logging.getLogger(__name__)

VCODECS = ("libsvtav1", "h264", "hevc")
VIDEO_ENCODERS = ("stream", "lerobot")


@dataclass
class RecordConfig:
    """Episode recording (the ``record`` block of a run config).

    Attributes:
        enabled: record every tick of the session into a LeRobotDataset (the default).
        root: dataset directory (created; an existing tandem/lerobot dataset is appended to). "": the run
            directory's ``dataset`` folder (``tandem run`` fills it in; a ``Session`` built in code with
            neither ``record.root`` nor ``session.run_dir`` records nothing).
        repo_id: the dataset's repo id ("" = ``local/<root directory name>``).
        use_videos: store cameras as videos (else as PNG images in the parquet files).
        vcodec: video codec: "h264" (the default: fast enough for two 640x480 cameras at 30 Hz on two
            cores), "hevc", "libsvtav1" (lerobot's default; about 5x the CPU of h264 "ultrafast").
        video_encoder: "stream": the converter feeds frames from the spool straight to one encoder thread
            per camera (no PNG files; ``runtime/recording/video_encoder.py``); "lerobot": lerobot's own
            path (a PNG per frame, encoded when the episode is saved; about 20x too slow at 640x480).
        preset: the encoder's speed preset with "stream": x264/x265 "ultrafast" .. "veryslow", SVT-AV1
            "0".."13"; "" = the codec's default.
        encoder_threads: threads per video encoder (0: the codec decides).
        flush_s: the spool is fsynced at least this often (seconds); power loss loses at most this much.
        queue_size: ticks buffered between the control thread and the writer (500 = 10 s at 50 Hz).
        close_timeout_s: at session end, how long to wait for the last episodes to be converted.
        nice: niceness added to the converter process.
    """

    enabled: bool = True
    root: str = ""
    repo_id: str = ""
    use_videos: bool = True
    vcodec: str = "h264"
    video_encoder: str = "stream"
    preset: str = "ultrafast"
    encoder_threads: int = 1
    flush_s: float = 1.0
    queue_size: int = 500
    close_timeout_s: float = 300.0
    nice: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.root, str):
            raise ConfigError("record.root", self.root, "a dataset directory, or '' for <run_dir>/dataset")
        one_of("record.vcodec", self.vcodec, VCODECS)
        one_of("record.video_encoder", self.video_encoder, VIDEO_ENCODERS)
        problem = check_preset(self.vcodec, self.preset) if isinstance(self.preset, str) else "a string"
        if problem:
            raise ConfigError("record.preset", self.preset, f"for record.vcodec={self.vcodec}: {problem}")
        in_range("record.encoder_threads", self.encoder_threads, 0, 64)
        in_range("record.flush_s", self.flush_s, 0.01, 1.0)
        in_range("record.queue_size", self.queue_size, 1, 1_000_000)
        positive("record.close_timeout_s", self.close_timeout_s)
        in_range("record.nice", self.nice, 0, 19)


@dataclass
class _Start:
    episode: int
    task: str


@dataclass
class _End:
    result: dict


_STOP = object()


class _NotWritten(Exception):
    """A tick of an episode whose spool directory could not be created."""


class Recorder:
    """A TickSink that records a session into a LeRobotDataset through a crash-safe spool.

    Args:
        config: RecordConfig (``root`` required).
        observation_features: the robot's observation schema.
        action_feature: the robot's action schema.
        fps: control rate (Hz); the dataset's fps (must be a whole number).
        feature_dim: F, the base policy's feature size (0: none recorded).
        robot_type: stored in the dataset's info.json.

    Call :meth:`start` before the first episode and :meth:`close` at the end (``finally``).
    """

    def __init__(
        self,
        config: RecordConfig,
        observation_features: dict[str, Feature],
        action_feature: Feature,
        fps: float,
        feature_dim: int = 0,
        robot_type: str = "",
    ) -> None:
        if not config.root:
            raise ConfigError("record.root", config.root, "set a dataset directory")
        if abs(fps - round(fps)) > 1e-9 or fps <= 0:
            raise ConfigError("robot.fps", fps, "a LeRobotDataset needs a whole positive number of frames per second")
        self.config = config
        self.root = Path(config.root)
        self.repo_id = config.repo_id or default_repo_id(self.root)
        self.fps = int(round(fps))
        self.robot_type = robot_type
        self.schema = SpoolSchema.build(observation_features, action_feature, feature_dim, config.use_videos)
        self.session = 0
        self.queue_capacity = queue_capacity(config.queue_size, self.schema.record_bytes)  # bounded in bytes too
        self._queue: queue.Queue = queue.Queue(maxsize=self.queue_capacity)
        self._thread: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._lock_fd: int | None = None
        self._proc_lock = threading.Lock()
        self._in_episode = False
        self._ep_dropped = 0
        self._closed = False
        # counters (ints written by one thread each; read anywhere)
        self.ticks = 0
        self.dropped = 0
        self.written = 0
        self.episodes_started = 0
        self.episodes_spooled = 0
        self.queue_high_water = 0
        self.write_errors: list[str] = []
        self.dropped_disk = 0  # ticks the writer could not spool (a full disk), counted lost
        self.disk_paused = False
        self.disk_pauses = 0
        self.committed: list[dict] = []
        self.recovered: list[dict] = []
        self.errors: list[dict] = []
        self.unparsed_lines = 0  # converter stdout lines that were not JSON events
        self.discarded: list[dict] = []  # the converter's "discarded" events (re-recorded episodes ...)
        self.writer_cpu_s = 0.0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Recorder:
        """Prepare the dataset directory, take its session lock, start the writer and the converter.

        Raises:
            ConfigError: ``record.root`` is not a dataset directory, or cannot be written.
        """
        self._check_root()
        try:
            state_dir(self.root).mkdir(parents=True, exist_ok=True)
            spool_dir(self.root).mkdir(exist_ok=True)
            self._lock_fd = acquire_session_lock(self.root)
        except OSError as exc:  # permissions, a file in the way, a full disk
            raise ConfigError("record.root", str(self.root), f"cannot be written ({exc.strerror or exc}); "
                              "record into a writable directory") from None
        try:
            self._check_schema()
            self.session = self._next_session()
            self._start_converter()
            self._thread = threading.Thread(target=self._run_writer, name="recorder-writer", daemon=True)
            self._thread.start()
        except BaseException:
            self._release_lock()
            raise
        return self

    def _check_root(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise ConfigError("record.root", str(root), "must be a directory")
        if root.is_dir() and any(root.iterdir()):
            if not (root / INFO_PATH).exists() and not state_dir(root).is_dir():
                raise ConfigError("record.root", str(root), "exists and is not a LeRobotDataset; choose a new directory")

    def _check_schema(self) -> None:
        info_path = self.root / INFO_PATH
        if not info_path.exists():
            return
        info = json.loads(info_path.read_text())
        have = {
            k: (v["dtype"], tuple(v["shape"]))
            for k, v in info["features"].items()
            if k not in LEROBOT_IMPLICIT_FEATURES
        }
        want = {k: (v["dtype"], tuple(v["shape"])) for k, v in self.schema.features.items()}
        if info.get("total_episodes", 0) and (have != want or int(info["fps"]) != self.fps):
            raise ConfigError(
                "record.root",
                str(self.root),
                f"holds a dataset with other features or fps ({info['fps']}); differences: "
                f"{sorted(set(have.items()) ^ set(want.items()))[:6]}; record into a new directory",
            )

    def _next_session(self) -> int:
        last = int(Journal(self.root).manifest().get("last_session", 0))
        for path in list_spool(spool_dir(self.root)):
            last = max(last, parse_name(path.name)[0])
        return last + 1

    def _start_converter(self) -> None:
        cmd = [
            sys.executable, "-m", "tandem.runtime.recording.dataset_store", "serve",
            "--root", str(self.root), "--session", str(self.session), "--repo-id", self.repo_id,
            "--vcodec", self.config.vcodec, "--encoder-threads", str(self.config.encoder_threads),
            "--nice", str(self.config.nice), "--video-encoder", self.config.video_encoder,
            "--preset", self.config.preset,
        ]  # fmt: skip
        env = {**os.environ, "SVT_LOG": os.environ.get("SVT_LOG", "1"), "HF_HUB_OFFLINE": "1"}
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env, close_fds=True
        )
        self._reader = threading.Thread(target=self._read_converter, name="recorder-events", daemon=True)
        self._reader.start()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- TickSink -------------------------------------------------------------------------------
    def start_episode(self, episode: int, task: str) -> None:
        """An episode begins (blocks only if the queue is full, which costs no tick)."""
        self._in_episode = True
        self._ep_dropped = 0
        self.episodes_started += 1
        self._queue.put(_Start(episode, task))

    def on_tick(self, record: TickRecord) -> None:
        """Copy the tick and queue it for the writer; never blocks. A full queue drops and counts it."""
        if not self._in_episode:
            return
        self.ticks += 1
        row = self.schema.pack(record)
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1
            self._ep_dropped += 1
            if self._ep_dropped == 1:
                log.warning("recorder queue full (%d ticks): dropping ticks of this episode", self.queue_capacity)
            return
        depth = self._queue.qsize()
        if depth > self.queue_high_water:
            self.queue_high_water = depth

    def end_episode(self, result: EpisodeResult) -> None:
        """The episode ended; its outcome is stored with it."""
        if not self._in_episode:
            return
        self._in_episode = False
        if self._ep_dropped:
            log.warning("recorder dropped %d ticks of episode %d", self._ep_dropped, result.episode)
        end = {
            "outcome": result.outcome,
            "success": bool(result.success),
            "steps": int(result.steps),
            "seed": result.seed,
            "total_reward": float(result.total_reward),
            "takeovers": int(result.takeovers),
            "intervention_ticks": int(result.intervention_ticks),
            "starved_ticks": int(result.starved_ticks),
            "wall_s": float(result.wall_s),
            "dropped_ticks": int(self._ep_dropped),
            # the episode's safety events: the filter's counters and the faults it met (read retries, a
            # restarted policy worker ...), only those that happened
            "safety": {k: int(v) for k, v in result.safety.items() if v},
            "faults": {k: v for k, v in result.faults.items() if isinstance(v, int | float) and v},
        }
        self._queue.put(_End(end))

    def close(self, timeout_s: float | None = None) -> dict:
        """Flush the spool, wait for the converter to commit what is complete, release the dataset.

        An episode still open (the session was interrupted) is closed with outcome "stopped".
        Returns :meth:`stats`. Safe to call twice.
        """
        if self._closed:
            return self.stats()
        self._closed = True
        timeout_s = self.config.close_timeout_s if timeout_s is None else timeout_s
        try:
            if self._in_episode:
                self._in_episode = False
                self._queue.put(_End({"outcome": "stopped", "dropped_ticks": int(self._ep_dropped)}))
            if self._thread is not None:
                self._queue.put(_STOP)
                self._thread.join()
            self._stop_converter(timeout_s)
        finally:
            self._release_lock()
        stats = self.stats()
        if stats["dropped"] or stats["errors"]:
            log.warning("recorder: %d ticks dropped, errors: %s", stats["dropped"], stats["errors"])
        return stats

    def _stop_converter(self, timeout_s: float) -> None:
        proc = self._proc
        if proc is None:
            return
        self._send("stop")
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning(
                "recorder: the converter is still committing after %.0f s; it finishes on its own "
                "(pid %d), or the next session recovers the spool", timeout_s, proc.pid,
            )
            return
        if self._reader is not None:
            self._reader.join(timeout=5)
        if proc.returncode != 0:
            self.errors.append({"event": "error", "error": f"converter exited with {proc.returncode}"})

    # -- threads --------------------------------------------------------------------------------
    def _send(self, command: str) -> None:
        with self._proc_lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            try:
                proc.stdin.write(command + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass

    def _run_writer(self) -> None:
        """The writer thread: queue -> spool. Storage faults degrade, never kill it: a tick that cannot be
        written is counted lost (``dropped_disk``, and in its episode's ``dropped_ticks``), an episode whose
        directory or ``end.json`` cannot be written is retried, and writing resumes once the disk takes
        writes again."""
        writer: SpoolEpisodeWriter | None = None
        pending: _Start | None = None  # the episode in progress, until its spool directory exists
        pending_seq = 0
        ep_lost = 0  # ticks of the episode in progress lost to storage faults
        unfinished: list[tuple[SpoolEpisodeWriter, dict]] = []  # ended episodes whose end.json failed
        seq = 0
        last_sync = last_retry = time.monotonic()
        flush_s = self.config.flush_s
        cpu0 = time.thread_time()
        while True:
            try:
                item = self._queue.get(timeout=min(0.1, flush_s / 2))
            except queue.Empty:
                item = None
            if isinstance(item, np.ndarray):
                if writer is None and pending is not None:
                    writer = self._try_open(pending_seq, pending)
                    if writer is not None:
                        pending = None
                try:
                    if writer is None:
                        raise _NotWritten
                    writer.append(item)
                    self.written += 1
                    self._resumed()
                except (OSError, _NotWritten) as exc:
                    ep_lost += 1
                    self.dropped_disk += 1
                    if isinstance(exc, OSError):
                        self._storage_fault(exc)
            elif isinstance(item, _Start):
                if writer is not None:  # an episode that never ended: close it as stopped
                    self._finish(writer, {"outcome": "stopped", "dropped_ticks": ep_lost, "dropped_disk": ep_lost},
                                 unfinished)
                pending, pending_seq, ep_lost = item, seq, 0
                seq += 1
                writer = self._try_open(pending_seq, pending)
                if writer is not None:
                    pending = None
            elif isinstance(item, _End):
                end = dict(item.result)
                end["dropped_ticks"] = int(end.get("dropped_ticks", 0)) + ep_lost
                end["dropped_disk"] = ep_lost
                if writer is not None:
                    self._finish(writer, end, unfinished)
                elif pending is not None:  # the episode never got its spool directory: nothing of it is on disk
                    log.error("recorder: episode %d was not recorded: the spool could not be written (%d ticks lost)",
                              pending.episode, ep_lost)
                writer, pending, ep_lost = None, None, 0
            elif item is _STOP:
                if writer is not None:
                    self._finish(writer, {"outcome": "stopped", "dropped_ticks": ep_lost, "dropped_disk": ep_lost},
                                 unfinished)
                self._retry_unfinished(unfinished)
                for w, _ in unfinished:  # left without end.json: the next session recovers them as interrupted
                    self.write_errors.append(f"{w.directory.name}: end.json not written; recovered at the next start")
                break
            now = time.monotonic()
            if unfinished and now - last_retry >= 0.5:
                self._retry_unfinished(unfinished)
                last_retry = now
            if writer is not None and now - last_sync >= flush_s:
                try:
                    writer.sync()
                except OSError as exc:  # the records are in the page cache; a later sync tries again
                    self._storage_fault(exc)
                last_sync = now
        self.writer_cpu_s = time.thread_time() - cpu0

    def _try_open(self, seq: int, start: _Start) -> SpoolEpisodeWriter | None:
        """The episode's spool writer, or None if its directory cannot be written yet (retried later)."""
        try:
            writer = self._open_episode(seq, start)
        except OSError as exc:
            self._storage_fault(exc)
            return None
        self._resumed()
        return writer

    def _retry_unfinished(self, unfinished: list[tuple[SpoolEpisodeWriter, dict]]) -> None:
        for item in list(unfinished):
            unfinished.remove(item)
            self._finish(*item, unfinished)

    def _storage_fault(self, exc: OSError) -> None:
        """Note a failed spool write (a full disk, permissions): counted, logged once per pause."""
        text = f"{type(exc).__name__}: {exc}"
        if text not in self.write_errors and len(self.write_errors) < 20:
            self.write_errors.append(text)
        if not self.disk_paused:
            self.disk_paused = True
            self.disk_pauses += 1
            log.error("recorder: the spool under %s cannot be written (%s): recording paused, the robot keeps "
                      "running and every lost tick is counted; it resumes once the disk takes writes", self.root, exc)

    def _resumed(self) -> None:
        if self.disk_paused:
            self.disk_paused = False
            log.warning("recorder: the disk takes writes again: recording resumed (%d ticks lost so far)",
                        self.dropped_disk)

    def _open_episode(self, seq: int, start: _Start) -> SpoolEpisodeWriter:
        header = {
            "session": self.session,
            "seq": seq,
            "episode": int(start.episode),
            "task": start.task,
            "fps": self.fps,
            "robot_type": self.robot_type,
            "use_videos": self.config.use_videos,
            "features": self.schema.features,
            "created": time.time(),
        }
        return SpoolEpisodeWriter(spool_dir(self.root) / episode_name(self.session, seq), header, self.schema.dtype)

    def _finish(self, writer: SpoolEpisodeWriter, end: dict, unfinished: list) -> None:
        """Close the episode's spool with its ``end.json``; on failure keep it in ``unfinished`` (retried)."""
        try:
            writer.finish(end)
        except OSError as exc:
            self._storage_fault(exc)
            unfinished.append((writer, end))
            return
        self.episodes_spooled += 1
        self._resumed()
        self._send("wake")

    def _read_converter(self) -> None:
        proc = self._proc
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # not an event (a library printing to stdout): counted, shown once
                self.unparsed_lines += 1
                if self.unparsed_lines == 1:
                    log.warning("recorder: the converter printed a line that is not an event: %.200r", line)
                continue
            kind = event.get("event")
            if kind == "committed":
                (self.recovered if event.get("session") != self.session else self.committed).append(event)
            elif kind == "discarded":
                self.discarded.append(event)
            elif kind == "error":
                self.errors.append(event)
                log.error("recorder: converting %s failed: %s", event.get("spool"), event.get("error"))

    # -- reporting ------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters: ticks seen/dropped/written, episodes, commits, errors (JSON-ready)."""
        return {
            "root": str(self.root),
            "session": self.session,
            "ticks": self.ticks,
            "dropped": self.dropped + self.dropped_disk,  # every tick seen and not recorded
            "dropped_queue_full": self.dropped,
            "dropped_disk": self.dropped_disk,
            "disk_pauses": self.disk_pauses,
            "written": self.written,
            "queue_high_water": self.queue_high_water,
            "episodes_started": self.episodes_started,
            "episodes_spooled": self.episodes_spooled,
            "episodes_committed": len(self.committed),
            "frames_committed": sum(e["length"] for e in self.committed),
            # bytes after an episode's last valid tick record (a torn or corrupt tail), dropped when committed
            "torn_bytes": sum(int(e.get("torn_bytes", 0)) for e in self.committed),
            "converter_unparsed_lines": self.unparsed_lines,
            "episodes_rerecorded": sum(e.get("reason") == "rerecord" for e in self.discarded),
            "episodes_recovered": len(self.recovered),
            "frames_recovered": sum(e["length"] for e in self.recovered),
            "writer_cpu_s": round(self.writer_cpu_s, 3),
            "errors": [e.get("error") for e in self.errors] + self.write_errors,
        }


def make_recorder(config: RecordConfig, robot: Any, policy: Any = None) -> Recorder:
    """A Recorder for ``robot``'s schemas and ``policy``'s feature size (not started)."""
    return Recorder(
        config,
        robot.observation_features,
        robot.action_feature,
        fps=robot.fps,
        feature_dim=int(getattr(policy, "feature_dim", 0) or 0),
        robot_type=getattr(robot, "name", ""),
    )
