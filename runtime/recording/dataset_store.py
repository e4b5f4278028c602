"""Spooled episodes -> LeRobotDataset episodes, one crash-safe commit at a time, and recovery.

lerobot's writer (``LeRobotDataset.add_frame``/``save_episode``) appends episodes to parquet and mp4
files that only become readable at ``finalize()``. This module uses that writer unchanged, but makes
every episode a commit that a kill at any moment can roll back:

1. Each episode is written to files of its own: after ``save_episode()`` the store calls
   ``finalize()`` and arms lerobot's own "resume" logic, so the next episode starts new data,
   episode-metadata and video files (:func:`seal_episode`). Committed files are never touched again;
   only the small top-level ``meta/`` files (info.json, stats.json, tasks.parquet and tandem's
   ``tandem_episodes.jsonl``) are rewritten.
2. After an episode is written and fsynced, a commit record is written under ``<root>/.tandem/commits/``
   (atomic rename): the list of immutable files with their sizes, copies of the top-level meta files,
   and the spool episodes already committed. Then the episode's spool directory is deleted.
3. :meth:`DatasetStore.open` rolls the dataset back to the last commit: files not in it are deleted
   (partial parquet/mp4 files, lerobot's temporary images), meta files are restored from the copies.
   Spooled episodes are then converted again, complete or interrupted (``recover``).

Video features are encoded while the episode's frames are added, by
:class:`~tandem.runtime.recording.video_encoder.SpoolVideoEncoder` (one encoder thread per camera, no PNG
files; ``record.video_encoder=stream``, the default), which lerobot's writer takes through its streaming
encoder seam; ``record.video_encoder=lerobot`` leaves lerobot's PNG-then-encode path in place.

The converter runs in its own process (``python -m tandem.runtime.recording.dataset_store serve``, started by the
:class:`~tandem.runtime.recording.recorder.Recorder`), niced, so encoding never competes with the control loop
for the GIL. ``tandem recover DIR`` runs the same recovery by hand.

Per-episode outcome (success/failure/timeout/stopped, "interrupted" for an episode whose process died)
and session bookkeeping are stored in ``meta/tandem_episodes.jsonl``, one JSON object per dataset
episode (lerobot ignores the file). A re-recorded episode (outcome "rerecord" in its ``end.json``) is
never converted: its spool directory is deleted under the commit lock (by the converter, or by
recovery if the session died first), so the dataset's episode indices stay contiguous.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tandem.core.durable import fsync_path
from tandem.core.errors import TandemError
from tandem.runtime.recording.tick_spool import (
    SpooledEpisode,
    fsync_dir,
    list_spool,
    parse_name,
    read_spool_episode,
    write_json_atomic,
)
from tandem.runtime.recording.video_encoder import SpoolVideoEncoder

log = logging.getLogger(__name__)

STATE_DIR = ".tandem"
SPOOL_DIR = "spool"
COMMITS_DIR = "commits"
SESSION_LOCK = "session.lock"
COMMIT_LOCK = "commit.lock"
OUTCOMES_PATH = "meta/tandem_episodes.jsonl"
INFO_PATH = "meta/info.json"
INTERRUPTED = "interrupted"
DEFAULT_VCODEC = "h264"  # record.vcodec's default
DEFAULT_PRESET = "ultrafast"  # record.preset's default
RERECORD = "rerecord"  # an episode's outcome when the operator asked to record it again: discarded
# features every LeRobotDataset has (lerobot.datasets.utils.DEFAULT_FEATURES), not part of a recording's schema
LEROBOT_IMPLICIT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")


class DatasetBusyError(TandemError, RuntimeError):
    """Another live session is recording into this dataset."""


class DatasetCorruptError(TandemError, RuntimeError):
    """A committed file is missing or changed: the dataset cannot be rolled back to its last commit."""


def state_dir(root: Path | str) -> Path:
    """``<root>/.tandem``: spool, commits, locks."""
    return Path(root) / STATE_DIR


def spool_dir(root: Path | str) -> Path:
    """``<root>/.tandem/spool``."""
    return state_dir(root) / SPOOL_DIR


def default_repo_id(root: Path | str) -> str:
    """The repo id used for a local dataset when none is given: ``local/<directory name>``."""
    return f"local/{Path(root).resolve().name}"


@contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created); yields False if not blocking and it is taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def acquire_session_lock(root: Path) -> int:
    """Take the dataset's session lock for the caller's lifetime; returns the fd (close it to release).

    Raises DatasetBusyError if another live process holds it.
    """
    path = state_dir(root) / SESSION_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise DatasetBusyError(f"{root} is being recorded by another session (pid {holder or '?'})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def is_meta_file(rel: str) -> bool:
    """True for the top-level files of ``meta/`` (rewritten by every episode); the rest is immutable."""
    parts = rel.split("/")
    return len(parts) == 2 and parts[0] == "meta"


def dataset_files(root: Path) -> dict[str, int]:
    """Every file under ``root`` except ``.tandem/``: relative POSIX path -> size in bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and STATE_DIR in dirnames:
            dirnames.remove(STATE_DIR)
        for name in filenames:
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full.stat().st_size
    return out


def _remove_empty_dirs(root: Path) -> None:
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        path = Path(dirpath)
        if path == root or STATE_DIR in path.relative_to(root).parts:
            continue
        if not any(path.iterdir()):  # children removed in this walk are gone by now
            path.rmdir()


class Journal:
    """The dataset's commit records under ``<root>/.tandem/commits/<seq:08d>/``.

    A commit holds ``manifest.json`` (``files``: immutable relative path -> size, ``meta``: top-level
    meta files, ``committed``: spool episode names already in the dataset, ``last_session``,
    ``episodes``, ``frames``) and ``meta/`` copies of the top-level meta files. Only the newest is kept.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = state_dir(root) / COMMITS_DIR

    def latest(self) -> tuple[Path, dict] | None:
        """(directory, manifest) of the newest complete commit, or None."""
        if not self.dir.is_dir():
            return None
        for path in sorted((p for p in self.dir.iterdir() if p.name.isdigit()), reverse=True):
            try:
                return path, json.loads((path / "manifest.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
        return None

    def manifest(self) -> dict:
        """The newest manifest (an empty one before the first commit)."""
        found = self.latest()
        return found[1] if found else {"seq": -1, "files": {}, "meta": [], "committed": [], "last_session": 0}

    def write(self, manifest: dict) -> None:
        """Durably record a new commit: copies of the meta files + manifest, then an atomic rename."""
        self.dir.mkdir(parents=True, exist_ok=True)
        seq = int(manifest["seq"])
        tmp = self.dir / f"tmp-{seq:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "meta").mkdir(parents=True)
        for rel in manifest["meta"]:
            dst = tmp / "meta" / Path(rel).name
            shutil.copyfile(self.root / rel, dst)
            fsync_path(dst)
        fsync_dir(tmp / "meta")
        write_json_atomic(tmp / "manifest.json", manifest)
        final = self.dir / f"{seq:08d}"
        os.rename(tmp, final)
        fsync_dir(self.dir)
        for old in self.dir.iterdir():
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    @property
    def pending_path(self) -> Path:
        """Marker present while an episode is being written (between two commits)."""
        return self.dir.parent / "pending.json"

    def begin(self, spool: str) -> None:
        """Mark that dataset files are about to change (a crash from here on is rolled back)."""
        write_json_atomic(self.pending_path, {"spool": spool, "seq": int(self.manifest()["seq"])})

    def end(self) -> None:
        """The change is committed (or rolled back)."""
        self.pending_path.unlink(missing_ok=True)
        fsync_dir(self.pending_path.parent)

    def init(self) -> dict:
        """Write commit 0 from the current files if there is no commit yet (adopts an existing dataset)."""
        found = self.latest()
        if found is not None:
            return found[1]
        for stale in self.dir.glob("tmp-*") if self.dir.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
        return self.adopt({"seq": -1, "committed": [], "last_session": 0})

    def adopt(self, prev: dict) -> dict:
        """Commit the dataset files as they are now (after ``prev``, whose spool bookkeeping is kept)."""
        files = dataset_files(self.root)
        info = self._info()
        manifest = {
            "seq": int(prev["seq"]) + 1,
            "files": {k: v for k, v in files.items() if not is_meta_file(k)},
            "meta": sorted(k for k in files if is_meta_file(k)),
            "committed": list(prev.get("committed", [])),
            "last_session": int(prev.get("last_session", 0)),
            "episodes": int(info.get("total_episodes", 0)),
            "frames": int(info.get("total_frames", 0)),
        }
        self.write(manifest)
        return manifest

    def _info(self) -> dict:
        try:
            return json.loads((self.root / INFO_PATH).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def rollback(self) -> dict:
        """Make the dataset files equal to the last commit if an episode was being written (pending marker).

        Without the marker nothing of tandem's was in flight: files that differ from the last commit were
        changed by someone else (a README, lerobot's dataset tools) and are adopted as a new commit, never
        deleted. Returns {"removed": [...], "restored": [...], "adopted": bool}.
        """
        found = self.latest()
        if found is None:
            raise DatasetCorruptError(f"{self.root} has no commit record; nothing to roll back to")
        commit_dir, manifest = found
        removed, restored = [], []
        current = dataset_files(self.root)
        if not self.pending_path.exists():
            immutable = {k: v for k, v in current.items() if not is_meta_file(k)}
            meta = sorted(k for k in current if is_meta_file(k))
            same_meta = meta == manifest["meta"] and all(
                (self.root / rel).read_bytes() == (commit_dir / "meta" / Path(rel).name).read_bytes() for rel in meta
            )
            if immutable == manifest["files"] and same_meta:
                return {"removed": [], "restored": [], "adopted": False}
            log.warning("%s changed outside tandem since its last commit; keeping the changes", self.root)
            self.adopt(manifest)
            return {"removed": [], "restored": [], "adopted": True}
        for rel in current:
            keep = rel in manifest["meta"] if is_meta_file(rel) else rel in manifest["files"]
            if not keep:
                (self.root / rel).unlink()
                removed.append(rel)
        for rel in manifest["meta"]:
            src, dst = commit_dir / "meta" / Path(rel).name, self.root / rel
            if dst.exists() and dst.read_bytes() == src.read_bytes():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".restore")
            shutil.copyfile(src, tmp)
            fsync_path(tmp)
            os.replace(tmp, dst)
            fsync_dir(dst.parent)
            restored.append(rel)
        _remove_empty_dirs(self.root)
        now = dataset_files(self.root)
        bad = [rel for rel, size in manifest["files"].items() if now.get(rel) != size]
        if bad:
            raise DatasetCorruptError(f"committed files missing or changed in {self.root}: {bad[:5]}")
        self.end()
        return {"removed": removed, "restored": restored, "adopted": False}


def seal_episode(dataset: Any) -> None:
    """Close the episode just saved by ``dataset.save_episode()`` and make the next one use new files.

    ``finalize()`` writes the parquet footers. Then lerobot 0.4.4's own resume paths are armed, as if the
    dataset had just been reopened: ``_writer_closed_for_reading`` makes the next data file a new one,
    and ``meta.latest_episode = None`` with ``meta.episodes`` ending in this episode makes the next
    episode-metadata and video files new ones. (Tested in tests/runtime/recording/test_recorder.py.)
    """
    dataset.finalize()
    latest = dataset.meta.latest_episode
    dataset._writer_closed_for_reading = True
    if latest is not None:
        dataset.meta.episodes = [{k: (v[0] if isinstance(v, list) else v) for k, v in latest.items()}]
        dataset.meta.latest_episode = None


def _quiet_lerobot() -> None:
    """Silence per-episode noise of lerobot's writer: ``datasets`` progress bars, bool-histogram warnings."""
    import datasets

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message="Converting input from bool", category=RuntimeWarning)
    # datasets encodes lerobot's (1,)-shaped scalar features with int()/float() on 1-element arrays
    warnings.filterwarnings("ignore", message="Conversion of an array with ndim > 0", category=DeprecationWarning)


def _check_features(root: Path, have: dict, want: dict, fps: Any, want_fps: int) -> None:
    def core(features: dict) -> dict:
        return {k: (v["dtype"], tuple(v["shape"])) for k, v in features.items()}

    have = {k: v for k, v in have.items() if k not in LEROBOT_IMPLICIT_FEATURES}
    if core(have) != core(want) or int(fps) != int(want_fps):
        diff = sorted(set(core(have).items()) ^ set(core(want).items()))
        raise ValueError(
            f"the dataset at {root} has other features or fps ({fps}) than this recording ({want_fps}); "
            f"differences: {diff[:6]}. Record into a new directory."
        )


class DatasetStore:
    """Converts spooled episodes into a LeRobotDataset at ``root``; call only under the commit lock.

    Args:
        root: dataset directory (holds ``.tandem/``).
        repo_id: the dataset's repo id (default ``local/<directory name>``).
        vcodec: lerobot video codec ("libsvtav1", "h264", "hevc").
        encoder_threads: encoder threads per video (None: the codec decides).
        video_encoder: "stream": frames go from the spool to one encoder thread per camera
            (:class:`~tandem.runtime.recording.video_encoder.SpoolVideoEncoder`, no PNG files); "lerobot":
            lerobot's own path (a PNG per frame, encoded at ``save_episode``).
        preset: the codec's speed preset for "stream" ("" = the codec's default).
    """

    def __init__(self, root: Path | str, repo_id: str = "", vcodec: str = DEFAULT_VCODEC, encoder_threads: int | None = 1,
                 video_encoder: str = "stream", preset: str = DEFAULT_PRESET):
        self.root = Path(root)
        self.repo_id = repo_id or default_repo_id(root)
        self.vcodec = vcodec
        self.encoder_threads = encoder_threads
        self.video_encoder = video_encoder
        self.preset = preset
        self.journal = Journal(self.root)
        self._ds: Any = None
        self._seq = -1

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self) -> dict:
        """Start from the last commit: write commit 0 if none, roll back, drop committed spool dirs."""
        self.journal.init()
        report = self.journal.rollback()
        self._seq = int(self.journal.manifest()["seq"])
        committed = set(self.journal.manifest()["committed"])
        for path in list_spool(spool_dir(self.root)):
            if path.name in committed:
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(state_dir(self.root) / "staging", ignore_errors=True)
        return report

    def _sync(self) -> None:
        """If another process committed since our last commit (a converter orphaned by a killed session,
        or recovery) or died while writing (pending marker), start again from the files: roll back any
        leftovers, reopen the dataset."""
        seq = int(self.journal.manifest()["seq"])
        if seq != self._seq or self.journal.pending_path.exists():
            self.close()
            self.journal.rollback()
            self._seq = seq

    def close(self) -> None:
        """Release the dataset object (its files are already sealed)."""
        if self._ds is not None:
            try:
                self._ds.finalize()
            except Exception:  # noqa: BLE001 - best effort: everything committed is already sealed
                log.debug("finalize on close failed", exc_info=True)
        self._ds = None

    def abort(self) -> dict:
        """After a failed conversion: drop the dataset object and roll back to the last commit."""
        self.close()
        report = self.journal.rollback()
        self._seq = int(self.journal.manifest()["seq"])
        return report

    # -- conversion -----------------------------------------------------------------------------
    def _dataset(self, header: dict) -> Any:
        _quiet_lerobot()
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        features, fps = header["features"], int(header["fps"])
        if self._ds is not None:
            _check_features(self.root, self._ds.features, features, self._ds.fps, fps)
            return self._ds
        info_path = self.root / INFO_PATH
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        if info.get("total_episodes", 0) > 0:
            _check_features(self.root, info["features"], features, info["fps"], fps)
            self._ds = LeRobotDataset(
                self.repo_id, root=self.root, vcodec=self.vcodec, encoder_threads=self.encoder_threads
            )
            return self._with_encoder(self._ds)
        # A new dataset: lerobot's create() wants a directory that does not exist yet (ours holds
        # .tandem/), so create it in a staging directory and move its only file, meta/info.json.
        staging = state_dir(self.root) / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        ds = LeRobotDataset.create(
            self.repo_id,
            fps,
            features,
            root=staging,
            robot_type=header.get("robot_type") or None,
            use_videos=bool(header.get("use_videos", True)),
            vcodec=self.vcodec,
            encoder_threads=self.encoder_threads,
            metadata_buffer_size=1,
        )
        info_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / INFO_PATH, info_path)
        shutil.rmtree(staging, ignore_errors=True)
        ds.root = self.root
        ds.meta.root = self.root
        self._ds = self._with_encoder(ds)
        return ds

    def _with_encoder(self, ds: Any) -> Any:
        """Give ``ds`` a :class:`SpoolVideoEncoder` through lerobot's streaming seam (``video_encoder="stream"``).

        Raises:
            TandemError: this lerobot's dataset has no streaming seam (``record.video_encoder=lerobot`` works).
        """
        if self.video_encoder != "stream" or not ds.meta.video_keys:
            return ds
        if not hasattr(ds, "_streaming_encoder"):
            raise TandemError("tandem: this lerobot's LeRobotDataset has no streaming encoder seam "
                              "(_streaming_encoder, lerobot 0.4.4); set record.video_encoder=lerobot")
        ds._streaming_encoder = SpoolVideoEncoder(int(ds.fps), self.vcodec, self.preset, self.encoder_threads)
        return ds

    def commit_episode(self, episode: SpooledEpisode) -> dict:
        """Append one spooled episode (>= 1 frame) to the dataset, commit it, delete its spool dir.

        An interrupted episode (no end.json) gets outcome "interrupted"; if its last recorded frame is
        neither ``done`` nor ``truncated``, that frame is marked ``truncated`` (the episode was cut short).
        Returns the episode's ``tandem_episodes.jsonl`` entry.
        """
        import numpy as np

        rows = episode.rows
        n = len(rows)
        if n == 0:
            raise ValueError(f"spooled episode {episode.name} has no frames")
        self._sync()
        header, end = episode.header, episode.end or {}
        features = header["features"]
        self.journal.begin(episode.name)
        ds = self._dataset(header)
        cut_short = not (rows["done"][-1, 0] or rows["truncated"][-1, 0])
        task = header["task"]
        columns = {k: rows[k] for k in features}
        encoder = getattr(ds, "_streaming_encoder", None)
        if isinstance(encoder, SpoolVideoEncoder):
            encoder.plan(n)  # statistics over lerobot's sample of the n frames
        for i in range(n):
            frame = {k: np.array(c[i]) for k, c in columns.items()}  # copies out of the memory-mapped spool
            if cut_short and i == n - 1:
                frame["truncated"] = np.ones(1, bool)
            frame["task"] = task
            ds.add_frame(frame)
        ds.save_episode(parallel_encoding=False)
        seal_episode(ds)
        index = int(ds.meta.total_episodes) - 1
        entry = {
            "episode_index": index,
            "length": n,
            "task": task,
            "outcome": end.get("outcome", INTERRUPTED),
            "success": bool(end.get("success", False)),
            "recovered": episode.end is None,
            "session": int(header["session"]),
            "session_episode": int(header["episode"]),
            "spool": episode.name,
            "seed": end.get("seed"),
            "steps": int(end.get("steps", n)),
            "dropped_ticks": int(end.get("dropped_ticks", 0)),
            "torn_bytes": int(episode.torn_bytes),
            "total_reward": end.get("total_reward"),
            "takeovers": end.get("takeovers"),
            "intervention_ticks": end.get("intervention_ticks"),
            "starved_ticks": end.get("starved_ticks"),
            "safety": dict(end.get("safety") or {}),
            "faults": dict(end.get("faults") or {}),
        }
        with open(self.root / OUTCOMES_PATH, "a") as f:
            f.write(json.dumps(entry) + "\n")
        self._commit(episode, int(ds.meta.total_frames))
        return entry

    def _commit(self, episode: SpooledEpisode, total_frames: int) -> None:
        prev = self.journal.manifest()
        files = dataset_files(self.root)
        immutable = {k: v for k, v in files.items() if not is_meta_file(k)}
        meta = sorted(k for k in files if is_meta_file(k))
        dirs = set()
        for rel in [k for k in immutable if k not in prev["files"]] + meta:
            fsync_path(self.root / rel)
            dirs.add((self.root / rel).parent)
        for d in dirs:
            fsync_dir(d)
        self._seq = int(prev["seq"]) + 1
        self.journal.write(
            {
                "seq": self._seq,
                "files": immutable,
                "meta": meta,
                "committed": [*prev["committed"], episode.name],
                "last_session": max(int(prev.get("last_session", 0)), episode.session),
                "episodes": int(self._ds.meta.total_episodes),
                "frames": total_frames,
            }
        )
        self.journal.end()
        shutil.rmtree(episode.directory, ignore_errors=True)
        fsync_dir(episode.directory.parent)


def convert_pending(
    store: DatasetStore,
    select: Callable[[int], bool],
    include_partial: bool,
    emit: Callable[[dict], None],
    failed: set[str] | None = None,
    keep_going: Callable[[], bool] = lambda: True,
) -> list[dict]:
    """Commit the spooled episodes of the sessions ``select`` accepts, in order, each under the commit lock.

    ``include_partial``: also commit interrupted episodes (recovery; their process is dead) and delete
    empty ones. Episodes that fail are rolled back, reported and skipped (kept in the spool).
    ``keep_going`` is asked before each episode: False stops after the current commit (an orphaned
    converter leaves the rest to the next session or ``tandem recover``).
    """
    failed = set() if failed is None else failed
    done = []
    for path in list_spool(spool_dir(store.root)):
        if not keep_going():
            break
        session, _ = parse_name(path.name)
        if not select(session) or path.name in failed:
            continue
        with file_lock(state_dir(store.root) / COMMIT_LOCK):
            if not path.exists():  # committed meanwhile by another converter
                continue
            episode = read_spool_episode(path)
            if episode is None or (not episode.complete and not include_partial):
                # no header yet (being created, or its process died before writing one) / still recording
                if episode is None and include_partial:
                    shutil.rmtree(path, ignore_errors=True)
                    emit({"event": "discarded", "spool": path.name, "reason": "no header"})
                continue
            if len(episode.rows) == 0:
                shutil.rmtree(path, ignore_errors=True)
                emit({"event": "discarded", "spool": path.name, "reason": "no frames"})
                continue
            if episode.complete and episode.end.get("outcome") == RERECORD:  # the operator discarded it
                shutil.rmtree(path, ignore_errors=True)
                fsync_dir(path.parent)
                emit({"event": "discarded", "spool": path.name, "reason": RERECORD, "session": episode.session,
                      "session_episode": int(episode.header.get("episode", -1)), "length": len(episode.rows)})
                continue
            try:
                entry = store.commit_episode(episode)
            except Exception as exc:  # noqa: BLE001 - report, roll back, keep the episode for later
                log.exception("committing %s failed", path.name)
                failed.add(path.name)
                try:
                    store.abort()
                except Exception:  # noqa: BLE001
                    log.exception("rollback after a failed commit failed")
                emit({"event": "error", "spool": path.name, "error": f"{type(exc).__name__}: {exc}"})
                continue
        done.append(entry)
        emit({"event": "committed", **entry})
    return done


def recover(root: Path | str, repo_id: str = "", vcodec: str = DEFAULT_VCODEC, encoder_threads: int | None = 1,
            video_encoder: str = "stream", preset: str = DEFAULT_PRESET) -> dict:
    """Bring a dataset whose recording process died back to a loadable state (``tandem recover``).

    Rolls back to the last commit and commits every spooled episode, interrupted ones included.
    Refuses while a live session holds the dataset. Returns a JSON-ready report.
    """
    root = Path(root)
    if not state_dir(root).is_dir():
        if (root / INFO_PATH).exists():
            return {"root": str(root), "rolled_back": {"removed": [], "restored": []}, "committed": [], "note": "no tandem state"}
        raise FileNotFoundError(f"{root} is not a dataset recorded by tandem (no {STATE_DIR}/ or {INFO_PATH})")
    fd = acquire_session_lock(root)
    events: list[dict] = []
    try:
        store = DatasetStore(root, repo_id, vcodec, encoder_threads, video_encoder, preset)
        with file_lock(state_dir(root) / COMMIT_LOCK):
            rolled = store.open()
        committed = convert_pending(store, lambda s: True, True, events.append)
        store.close()
    finally:
        os.close(fd)
    manifest = Journal(root).manifest()
    return {
        "root": str(root),
        "rolled_back": rolled,
        "committed": [{k: e[k] for k in ("episode_index", "length", "outcome", "recovered", "spool")} for e in committed],
        "discarded": [e["spool"] for e in events if e["event"] == "discarded"],
        "errors": [e for e in events if e["event"] == "error"],
        "episodes": manifest.get("episodes", 0),
        "frames": manifest.get("frames", 0),
    }


def serve(
    root: Path | str,
    session: int,
    repo_id: str = "",
    vcodec: str = DEFAULT_VCODEC,
    encoder_threads: int | None = 1,
    video_encoder: str = "stream",
    preset: str = DEFAULT_PRESET,
    commands: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
) -> int:
    """The converter process: recover older sessions' episodes, then commit this session's as they complete.

    Reads commands from ``commands``, one per line: "wake" (an episode completed) or "stop" (commit what
    is complete and exit). End of input without "stop" means the recorder died: exit after the current
    commit and leave the rest to recovery. Events go to ``out`` as JSON lines.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the recorder stops us

    parent = os.getppid()
    gone = False

    def emit(event: dict) -> None:
        nonlocal gone
        try:
            out.write(json.dumps(event) + "\n")
            out.flush()
        except (BrokenPipeError, OSError, ValueError):  # the recorder died; recovery takes over
            gone = True

    _quiet_lerobot()
    import lerobot.datasets.lerobot_dataset  # noqa: F401  (import while the first episode records)

    store = DatasetStore(root, repo_id, vcodec, encoder_threads, video_encoder, preset)
    failed: set[str] = set()
    with file_lock(state_dir(root) / COMMIT_LOCK):
        rolled = store.open()
    emit({"event": "ready", "removed": len(rolled["removed"]), "restored": len(rolled["restored"])})

    def attached() -> bool:  # orphaned: stop after the current commit; the next session or `tandem recover` goes on
        return not gone and os.getppid() == parent

    convert_pending(store, lambda s: s != session, True, emit, failed, attached)
    for line in commands:
        if not attached():
            break
        command = line.strip()
        convert_pending(store, lambda s: s == session, False, emit, failed, attached)
        if command == "stop":
            if failed:  # e.g. a full disk that has space again: one more try before leaving them to recovery
                failed.clear()
                convert_pending(store, lambda s: s == session, False, emit, failed, attached)
            break
    store.close()
    emit({"event": "exit"})
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tandem.runtime.recording.dataset_store serve|recover ...``."""
    parser = argparse.ArgumentParser(prog="tandem.runtime.recording.dataset_store")
    parser.add_argument("command", choices=["serve", "recover"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--session", type=int, default=0)
    parser.add_argument("--repo-id", default="")
    parser.add_argument("--vcodec", default=DEFAULT_VCODEC)
    parser.add_argument("--video-encoder", choices=["stream", "lerobot"], default="stream")
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--encoder-threads", type=int, default=1)
    parser.add_argument("--nice", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per video otherwise
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.nice:
        os.nice(args.nice)
    threads = args.encoder_threads if args.encoder_threads > 0 else None
    if args.command == "serve":
        return serve(args.root, args.session, args.repo_id, args.vcodec, threads, args.video_encoder, args.preset)
    print(json.dumps(recover(args.root, args.repo_id, args.vcodec, threads, args.video_encoder, args.preset), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
