"""Per-tick numbers of a session, kept in numpy arrays and saved as ``ticks.npz`` (for the report).

A :class:`TickLog` is a tick sink (``tandem.runtime.control.loop.TickSink``): ``on_tick`` writes seven scalars
into preallocated arrays (a few microseconds, no allocation except when the arrays double), so it can
sit beside the recorder in every session. After the session, ``save(run_dir)`` writes::

    run_dir/ticks.npz
        episode          int32[N]    episode index of each tick
        tick             int32[N]    tick index within its episode
        lateness_ms      float64[N]  the tick's start minus its deadline (ms, >= 0; 0 when not paced)
        is_intervention  bool[N]     a human action was sent
        head_version     int32[N]    weight version of the learned head that produced the action
        reward           float64[N]  the task's reward at this tick
        success          bool[N]     the task reported success at this tick
        episode_ids      int32[E]    episodes seen (start_episode order)
        episode_tasks    str[E]      their task (language instruction / task name)

Read it back with :func:`load_ticks`. Ticks are the loop's, in order; N is the number of ticks run.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from tandem.core.durable import write_bytes_atomic

TICKS_FILE = "ticks.npz"

#: name -> dtype of the per-tick arrays (the order of ``ticks.npz``).
FIELDS: dict[str, Any] = {
    "episode": np.int32,
    "tick": np.int32,
    "lateness_ms": np.float64,
    "is_intervention": np.bool_,
    "head_version": np.int32,
    "reward": np.float64,
    "success": np.bool_,
}


class TickLog:
    """Tick sink that keeps the per-tick numbers of a session in growing numpy arrays.

    Args:
        capacity: ticks preallocated (the arrays double when full; 65536 = 22 min at 50 Hz).

    Not thread-safe: ``on_tick`` runs on the control thread; read or save after the session.
    """

    def __init__(self, capacity: int = 65536) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        self._arrays = {name: np.zeros(capacity, dtype) for name, dtype in FIELDS.items()}
        self._n = 0
        self.tasks: dict[int, str] = {}  # episode -> task, from start_episode

    # -- TickSink ---------------------------------------------------------------------------------
    def start_episode(self, episode: int, task: str) -> None:
        """Note the episode's task."""
        self.tasks[int(episode)] = str(task)

    def on_tick(self, record: Any) -> None:
        """Append one tick's numbers (``record`` is a ``tandem.runtime.control.loop.TickRecord``)."""
        n = self._n
        a = self._arrays
        if n == len(a["episode"]):
            self._grow()
            a = self._arrays
        a["episode"][n] = record.episode
        a["tick"][n] = record.tick
        a["lateness_ms"][n] = record.lateness_ms
        a["is_intervention"][n] = record.is_intervention
        a["head_version"][n] = record.head_version
        a["reward"][n] = record.reward
        a["success"][n] = record.success
        self._n = n + 1

    def end_episode(self, result: Any) -> None:
        """Nothing to do: the episode's ticks are already in the arrays."""

    # -- reading ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def arrays(self) -> dict[str, np.ndarray]:
        """Copies of the per-tick arrays, [N] each, plus ``episode_ids`` [E] and ``episode_tasks`` [E]."""
        out = {name: arr[: self._n].copy() for name, arr in self._arrays.items()}
        episodes = sorted(self.tasks)
        out["episode_ids"] = np.asarray(episodes, np.int32)
        out["episode_tasks"] = np.asarray([self.tasks[e] for e in episodes], dtype=np.str_)
        return out

    def save(self, run_dir: Path) -> Path:
        """Write ``run_dir/ticks.npz`` (directory created, file replaced atomically); its path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **self.arrays())
        path = run_dir / TICKS_FILE
        write_bytes_atomic(path, buf.getvalue())
        return path

    def _grow(self) -> None:
        for name, arr in self._arrays.items():
            bigger = np.zeros(2 * len(arr), arr.dtype)
            bigger[: len(arr)] = arr
            self._arrays[name] = bigger


def load_ticks(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``ticks.npz`` (a file or a run directory holding one), fully loaded."""
    path = Path(path)
    if path.is_dir():
        path = path / TICKS_FILE
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
