"""The recorder's append-only spool: one directory per episode, raw fixed-size tick records.

The spool is the recorder's write-ahead log. LeRobotDataset keeps its parquet and video
files open until ``finalize()``, so a killed process leaves them unreadable; the spool instead holds
every tick as it happens, in a format that survives a kill at any byte, until the episode has been
committed to the dataset (``tandem.runtime.recording.dataset_store``).

Layout of one episode, ``<root>/.tandem/spool/<session:06d>-<seq:06d>/``:

- ``header.json``: written (atomically, fsynced) before the first tick: task, fps, the LeRobotDataset
  feature spec, and the numpy structured dtype of a tick record.
- ``ticks.bin``: fixed-size records appended with ``os.write`` as ticks arrive (a killed process
  loses nothing already written; power loss loses at most what was written since the last fsync,
  which happens at least every ``flush_s``). Each record is ``_magic`` (u4), ``_crc`` (u4, CRC-32 of
  the rest of the record), then one field per dataset feature (``observation.state``,
  ``observation.images.<cam>`` uint8[H, W, 3], ``action``, ``reward`` ...). Raw arrays, no pickle.
  A torn or corrupt tail is detected by the magic/CRC and dropped on reading.
- ``end.json``: written (atomically, fsynced) when the episode ends: outcome, steps, dropped ticks.
  An episode without it was interrupted (its process died).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.core.durable import fsync_path, write_json_atomic  # noqa: F401  (re-exported for dataset_store)
from tandem.hardware.features import ACTION_KEY, Feature

MAGIC = 0x54445331  # "TDS1"
FORMAT_VERSION = 1
HEADER = "header.json"
TICKS = "ticks.bin"
END = "end.json"

# Per-tick features beyond the robot's observation and the executed action, with the
# TickRecord attribute each comes from. Scalars are stored with shape (1,), as LeRobotDataset wants.
SCALAR_FIELDS: dict[str, tuple[str, str]] = {
    # dataset key: (dtype, TickRecord attribute)
    "is_intervention": ("bool", "is_intervention"),
    "takeover_start": ("bool", "takeover_start"),
    "starved": ("bool", "starved"),
    "success": ("bool", "success"),
    "done": ("bool", "done"),
    "truncated": ("bool", "truncated"),
    "tick": ("int64", "tick"),
    "chunk_index": ("int64", "chunk_index"),
    "chunk_step": ("int64", "chunk_step"),
    "head_version": ("int64", "head_version"),
    "base_version": ("int64", "base_version"),
    "reward": ("float32", "reward"),
    "tick_lateness_ms": ("float32", "lateness_ms"),
    "wall_time": ("float64", "obs_time"),
    "obs_time": ("float64", "obs_time"),
    "send_time": ("float64", "send_time"),
    "capture_time": ("float64", "capture_time"),  # when the sensors captured the observation (oldest camera)
}
POLICY_FEATURES_KEY = "policy_features"

#: the most bytes of tick records the recorder's queue holds between the control thread and the writer
#: (at 2 x 640x480 cameras, 145 ticks: 4.8 s at 30 Hz); with ``record.queue_size`` it bounds the
#: recorder's memory whatever the camera sizes: ``queue_capacity`` records of ``record_bytes`` each
QUEUE_BYTES = 256 * 2**20


def queue_capacity(queue_size: int, record_bytes: int, budget_bytes: int = QUEUE_BYTES) -> int:
    """Ticks the recorder's queue may hold: ``queue_size``, or fewer so that they fit in ``budget_bytes``.

    At least 1. E.g. 500 ticks of 96x96 cameras (56 KB each) stay 500; records of two 640x480
    cameras (1.84 MB) give 145.
    """
    return int(max(1, min(int(queue_size), int(budget_bytes) // max(1, int(record_bytes)))))


@dataclass(frozen=True)
class SpoolSchema:
    """The tick record layout and the LeRobotDataset feature spec, built from one robot schema.

    Attributes:
        dtype: numpy structured dtype of one record (``_magic``, ``_crc``, then one field per feature).
        features: LeRobotDataset ``features`` dict (without lerobot's implicit index/timestamp ones).
        observation_keys: keys copied from ``TickRecord.observation``.
        action_dim: A.
        feature_dim: F (0: no ``policy_features`` column).
    """

    dtype: np.dtype
    features: dict[str, dict]
    observation_keys: tuple[str, ...]
    action_dim: int
    feature_dim: int

    @classmethod
    def build(
        cls,
        observation_features: dict[str, Feature],
        action_feature: Feature,
        feature_dim: int = 0,
        use_videos: bool = True,
    ) -> SpoolSchema:
        """The schema for a robot's observation/action features and a base policy with F features."""
        fields: list[tuple] = [("_magic", "<u4"), ("_crc", "<u4")]
        features: dict[str, dict] = {}
        for key, feat in observation_features.items():
            fields.append((key, np.dtype(feat.dtype).str, tuple(feat.shape)))
            features[key] = feat.to_lerobot(use_videos)
        if len(action_feature.shape) != 1:
            raise ValueError(f"the action feature must be a vector, got shape {action_feature.shape}")
        action_dim = int(action_feature.shape[0])
        names = list(action_feature.names) if action_feature.names else None
        for key in (ACTION_KEY, "base_action", "head_action"):
            fields.append((key, "<f4", (action_dim,)))
            features[key] = {"dtype": "float32", "shape": (action_dim,), "names": names}
        if feature_dim > 0:
            fields.append((POLICY_FEATURES_KEY, "<f4", (feature_dim,)))
            features[POLICY_FEATURES_KEY] = {"dtype": "float32", "shape": (feature_dim,), "names": None}
        for key, (dtype, _) in SCALAR_FIELDS.items():
            fields.append((key, np.dtype(dtype).str, (1,)))
            features[key] = {"dtype": dtype, "shape": (1,), "names": None}
        return cls(
            dtype=np.dtype(fields),
            features=features,
            observation_keys=tuple(observation_features),
            action_dim=action_dim,
            feature_dim=int(feature_dim),
        )

    @property
    def record_bytes(self) -> int:
        """Size of one tick record in bytes."""
        return int(self.dtype.itemsize)

    def pack(self, record: Any) -> np.ndarray:
        """Copy one ``TickRecord`` into a new 1-element structured array (the control thread's only copy)."""
        row = np.empty(1, self.dtype)
        obs = record.observation
        for key in self.observation_keys:
            row[key] = obs[key]
        row[ACTION_KEY] = record.action
        row["base_action"] = record.base_action
        row["head_action"] = record.head_action
        if self.feature_dim:
            features = record.features
            # before the first chunk with features (or from a policy without them): zeros
            row[POLICY_FEATURES_KEY] = features if np.shape(features) == (self.feature_dim,) else 0.0
        for key, (_, attr) in SCALAR_FIELDS.items():
            row[key] = getattr(record, attr)
        return row


def dtype_to_json(dtype: np.dtype) -> list[list]:
    """A structured dtype as JSON: ``[[name, dtype string, shape], ...]``."""
    out = []
    for name in dtype.names:
        sub = dtype.fields[name][0]
        base, shape = (sub.base, list(sub.shape)) if sub.shape else (sub, [])
        out.append([name, base.str, shape])
    return out


def dtype_from_json(spec: list[list]) -> np.dtype:
    """Inverse of :func:`dtype_to_json`."""
    return np.dtype([(name, d, tuple(shape)) if shape else (name, d) for name, d, shape in spec])


def features_from_json(features: dict) -> dict[str, dict]:
    """A feature spec read from JSON, with shapes as tuples (LeRobotDataset compares them to arrays')."""
    return {k: {**v, "shape": tuple(v["shape"])} for k, v in features.items()}


fsync_dir = fsync_path  # a directory fsync; the one implementation lives in tandem.core.durable


def episode_name(session: int, seq: int) -> str:
    """Spool directory name; names sort in recording order."""
    return f"{session:06d}-{seq:06d}"


def parse_name(name: str) -> tuple[int, int] | None:
    """(session, seq) of a spool directory name, or None if it is not one."""
    parts = name.split("-")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


class SpoolEpisodeWriter:
    """Appends tick records of one episode; used by the recorder's writer thread only.

    Args:
        directory: the episode's spool directory (created; must not exist).
        header: JSON-ready header (task, fps, features ...); ``dtype`` is added.
        dtype: the record dtype.
    """

    def __init__(self, directory: Path, header: dict, dtype: np.dtype) -> None:
        self.directory = Path(directory)
        self.dtype = dtype
        self.directory.mkdir(parents=True, exist_ok=True)  # exists after an earlier try failed (a full disk)
        if (self.directory / TICKS).exists() and (self.directory / TICKS).stat().st_size:
            raise FileExistsError(f"{self.directory} already holds ticks")
        write_json_atomic(self.directory / HEADER, {**header, "format": FORMAT_VERSION, "dtype": dtype_to_json(dtype)})
        fsync_dir(self.directory.parent)
        self._fd = os.open(str(self.directory / TICKS), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.records = 0
        self._dirty = False

    def append(self, row: np.ndarray) -> None:
        """Stamp magic and CRC into the 1-element record ``row`` and append it (one ``os.write``).

        Raises:
            OSError: the write failed (a full disk); the file is cut back to its last whole record, so
                later records still read back.
        """
        raw = row.view(np.uint8)
        row["_magic"] = MAGIC
        row["_crc"] = zlib.crc32(raw[8:])
        view = memoryview(raw)
        written = 0
        try:
            while written < len(view):
                written += os.write(self._fd, view[written:])
        except OSError:
            if written:
                os.ftruncate(self._fd, self.records * self.dtype.itemsize)
            raise
        self.records += 1
        self._dirty = True

    def sync(self) -> None:
        """fsync what was appended since the last sync."""
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False

    def finish(self, end: dict) -> None:
        """Sync, close the tick file and write ``end.json``: the episode is complete."""
        self.close()
        write_json_atomic(self.directory / END, {**end, "records": self.records})

    def close(self) -> None:
        """Sync and close the tick file (without marking the episode complete). Safe to call twice."""
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = None


@dataclass
class SpooledEpisode:
    """An episode read back from the spool.

    Attributes:
        name: spool directory name (``<session>-<seq>``).
        directory: its path.
        header: header.json contents (``features`` with tuple shapes).
        rows: the valid records [N], in order, read from the file on demand (:class:`SpoolRows`).
        end: end.json contents, or None if the episode was interrupted.
        torn_bytes: bytes after the last valid record (a torn or corrupt tail), dropped.
    """

    name: str
    directory: Path
    header: dict
    rows: SpoolRows
    end: dict | None
    torn_bytes: int = 0

    @property
    def complete(self) -> bool:
        """True if the episode ended normally (end.json exists)."""
        return self.end is not None

    @property
    def session(self) -> int:
        """Recording session number."""
        return int(self.header["session"])


class SpoolColumn:
    """One field of a tick file's valid records, read from the file when indexed (never mapped whole).

    ``column[i]`` is record ``i``'s field as a new array of the field's shape (``column[-1]`` the last);
    ``column[i, j]`` indexes into it; ``np.asarray(column)`` reads the whole column [N, *shape].
    """

    def __init__(self, rows: SpoolRows, name: str) -> None:
        self._rows = rows
        self.name = name
        sub, self._offset = rows.dtype.fields[name][:2]
        self.dtype = sub.base if sub.shape else sub
        self.shape_per_record = tuple(sub.shape)
        self._nbytes = int(sub.itemsize)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def shape(self) -> tuple[int, ...]:
        """[N, *field shape]."""
        return (len(self._rows), *self.shape_per_record)

    def __getitem__(self, index: int | tuple) -> Any:
        rest: tuple = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        i = self._rows.check_index(index)
        buf = self._rows.pread(self._nbytes, i * self._rows.dtype.itemsize + self._offset)
        value = np.frombuffer(buf, self.dtype, count=max(1, int(np.prod(self.shape_per_record, dtype=np.int64))))
        value = value.reshape(self.shape_per_record).copy()
        return value[rest] if rest else value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        for i in range(len(self)):
            out[i] = self[i]
        return out if dtype is None else out.astype(dtype)


class SpoolRows:
    """The valid records of a tick file, read on demand with ``os.pread``: at any moment only the
    records being read are in memory, however long the episode (a memory map would keep every page
    it touched resident: 553 MB for 10 s of two 640x480 cameras at 30 Hz).

    ``len(rows)``; ``rows[name]`` a :class:`SpoolColumn`; ``rows[i]`` record ``i`` (a numpy structured
    scalar, a copy); iterating yields the records in order; ``np.asarray(rows)`` reads them all.
    """

    def __init__(self, path: Path, dtype: np.dtype, count: int) -> None:
        self.path = Path(path)
        self.dtype = dtype
        self._count = int(count)

    def __len__(self) -> int:
        return self._count

    def check_index(self, index: Any) -> int:
        """``index`` as a record number in 0..N-1 (negative counts from the end)."""
        i = int(index)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(f"record {index} of {self._count}")
        return i

    def pread(self, nbytes: int, offset: int) -> bytes:
        """``nbytes`` of the tick file at ``offset``."""
        fd = os.open(str(self.path), os.O_RDONLY)
        try:
            return read_exactly(fd, nbytes, offset)
        finally:
            os.close(fd)

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            if key not in self.dtype.names:
                raise KeyError(key)
            return SpoolColumn(self, key)
        i = self.check_index(key)
        size = self.dtype.itemsize
        return np.frombuffer(self.pread(size, i * size), self.dtype, count=1).copy()[0]

    def __iter__(self) -> Iterator[Any]:
        for i in range(self._count):
            yield self[i]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        size = self.dtype.itemsize
        out = np.frombuffer(bytearray(self.pread(size * self._count, 0)), self.dtype, count=self._count)
        return out if dtype is None else out.astype(dtype)


def read_exactly(fd: int, nbytes: int, offset: int) -> bytes:
    """``nbytes`` from ``fd`` at ``offset`` (``os.pread`` until done).

    Raises:
        EOFError: the file ends first.
    """
    parts, got = [], 0
    while got < nbytes:
        part = os.pread(fd, nbytes - got, offset + got)
        if not part:
            raise EOFError(f"{nbytes - got} bytes missing at offset {offset + got}")
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_records(path: Path, dtype: np.dtype) -> tuple[SpoolRows, int]:
    """Valid records of a tick file (:class:`SpoolRows`, read on demand) and the number of trailing bytes
    dropped.

    Records are checked in order, one at a time (read, CRC, forgotten: memory stays at one record);
    the first one with a wrong magic or CRC ends the valid prefix.
    """
    size = dtype.itemsize
    total = path.stat().st_size if path.exists() else 0
    n = total // size
    good = 0
    if n:
        fd = os.open(str(path), os.O_RDONLY)
        try:
            for i in range(n):
                raw = read_exactly(fd, size, i * size)
                magic, crc = np.frombuffer(raw, "<u4", count=2)
                if magic != MAGIC or zlib.crc32(memoryview(raw)[8:]) != int(crc):
                    break
                good += 1
        finally:
            os.close(fd)
    return SpoolRows(path, dtype, good), total - good * size


def read_spool_episode(directory: Path) -> SpooledEpisode | None:
    """Read one spooled episode, or None if its header was never completed (nothing was recorded)."""
    directory = Path(directory)
    try:
        header = json.loads((directory / HEADER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    header["features"] = features_from_json(header["features"])
    dtype = dtype_from_json(header["dtype"])
    rows, torn = read_records(directory / TICKS, dtype)
    end = None
    if (directory / END).exists():
        try:
            end = json.loads((directory / END).read_text())
        except json.JSONDecodeError:
            end = None
    return SpooledEpisode(directory.name, directory, header, rows, end, torn)


def list_spool(spool_dir: Path) -> list[Path]:
    """Episode directories in a spool, in recording order (other entries are ignored)."""
    if not Path(spool_dir).is_dir():
        return []
    return sorted(p for p in Path(spool_dir).iterdir() if p.is_dir() and parse_name(p.name) is not None)
