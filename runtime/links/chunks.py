"""Chunk records from ticks: the one place where H ticks become a ``ChunkRecord``.

The live session feeds ``TickRecord``s through :class:`ChunkAssembler` (a ``TickSink``); replaying a
recorded dataset feeds rows with the same attribute names through :func:`build_chunk`, so the learner's
stream and the dataset can never disagree. The one addition of the live stream: after an episode that
ended truncated (time limit, stop) the assembler sends its final observation
(:func:`build_final_observation`, a record with no valid tick), the bootstrap state of the episode's
last record(s); a dataset keeps no final observation, so replayed from it that last chunk has none.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tandem.core.validate import stride_of
from tandem.hardware.features import STATE_KEY
from tandem.protocol.chunk_record import ChunkRecord
from tandem.runtime.control.loop import EpisodeResult, FinalObservation, TickRecord


def tick_state(tick: Any) -> np.ndarray:
    """The state vector of a tick row (``TickRecord.observation[STATE_KEY]`` or ``row.state``)."""
    if hasattr(tick, "observation"):
        return np.asarray(tick.observation[STATE_KEY], np.float32)
    return np.asarray(tick.state, np.float32)


def build_chunk(
    ticks: Sequence[Any], horizon: int, robot_id: str, episode_id: int, chunk_index: int, task: str,
    base: np.ndarray | None = None, start_tick: int = -1,
) -> ChunkRecord:
    """One ChunkRecord from 1..H consecutive tick rows of one episode (padded to H, ``valid`` false).

    Each row needs: observation (or state), features, base_action, head_action, action, reward,
    is_intervention, takeover_start, done, truncated, failed, head_version, base_version, obs_time,
    send_time.
    Padding repeats the last executed action with zero reward, so shapes stay [H, A]. ``base``
    (float32[H, A]) replaces the rows' base actions (an overlapping record's plan window);
    ``start_tick`` is stored as the record's ``start_tick``.
    """
    n = len(ticks)
    if not 1 <= n <= horizon:
        raise ValueError(f"a chunk needs 1..{horizon} ticks, got {n}")
    first, last = ticks[0], ticks[-1]

    def stack(name: str, dtype: str) -> np.ndarray:
        rows = [np.asarray(getattr(t, name), dtype) for t in ticks]
        pad = [rows[-1]] * (horizon - n)
        return np.stack(rows + pad).astype(dtype)

    def flags(name: str) -> np.ndarray:
        out = np.zeros(horizon, bool)
        out[:n] = [bool(getattr(t, name)) for t in ticks]
        return out

    reward = np.zeros(horizon, np.float32)
    reward[:n] = [float(t.reward) for t in ticks]
    valid = np.zeros(horizon, bool)
    valid[:n] = True
    times = {}
    for name in ("obs_time", "send_time"):
        times[name] = np.zeros(horizon, np.float64)
        times[name][:n] = [float(getattr(t, name)) for t in ticks]
    return ChunkRecord(
        robot_id=robot_id,
        episode_id=int(episode_id),
        chunk_index=int(chunk_index),
        task=task,
        state=tick_state(first),
        features=np.asarray(first.features, np.float16).reshape(-1),
        base=stack("base_action", "float32") if base is None else np.asarray(base, np.float32).reshape(horizon, -1),
        head=stack("head_action", "float32"),
        executed=stack("action", "float32"),
        reward=reward,
        valid=valid,
        intervention=flags("is_intervention"),
        takeover_start=flags("takeover_start"),
        done=any(bool(t.done) for t in ticks),
        truncated=bool(last.truncated),
        head_version=int(first.head_version),
        base_version=int(first.base_version),
        obs_time=times["obs_time"],
        send_time=times["send_time"],
        start_tick=int(start_tick),
        failed=any(bool(t.failed) for t in ticks),
    )


def build_final_observation(final: FinalObservation, horizon: int, robot_id: str, chunk_index: int,
                            task: str) -> ChunkRecord:
    """The record of a truncated episode's final observation (``ChunkRecord.is_final_observation``).

    No tick ran in it: ``valid``, ``reward``, ``intervention`` and ``takeover_start`` are all false/zero,
    ``head`` and ``executed`` zeros [H, A]; ``state``/``features`` are the final observation's, ``base`` is
    ``final.base_window`` float32[H, A] (the base proposal there), ``start_tick`` is ``final.tick`` (the
    tick after the last executed one), ``truncated`` true, ``done`` false; ``obs_time[0]`` is when the
    observation was read (the rest 0).
    """
    base = np.asarray(final.base_window, np.float32).reshape(horizon, -1)
    obs_time = np.zeros(horizon, np.float64)
    obs_time[0] = float(final.obs_time)
    return ChunkRecord(
        robot_id=robot_id,
        episode_id=int(final.episode),
        chunk_index=int(chunk_index),
        task=task,
        state=np.asarray(final.observation[STATE_KEY], np.float32),
        features=np.asarray(final.features, np.float16).reshape(-1),
        base=base,
        head=np.zeros_like(base),
        executed=np.zeros_like(base),
        reward=np.zeros(horizon, np.float32),
        valid=np.zeros(horizon, bool),
        intervention=np.zeros(horizon, bool),
        takeover_start=np.zeros(horizon, bool),
        done=False,
        truncated=True,
        head_version=int(final.head_version),
        base_version=int(final.base_version),
        obs_time=obs_time,
        send_time=np.zeros(horizon, np.float64),
        start_tick=int(final.tick),
    )


def split_chunks(ticks: Sequence[Any], horizon: int) -> list[list[Any]]:
    """Group an episode's tick rows by ``chunk_index`` (in order)."""
    groups: dict[int, list[Any]] = {}
    for t in ticks:
        groups.setdefault(int(t.chunk_index), []).append(t)
    return [groups[k] for k in sorted(groups)]


class ChunkAssembler:
    """TickSink that emits a ChunkRecord every H ticks and a padded one at episode end.

    With ``stride`` s < H the records overlap (``session.record_stride``): one starts at every tick
    whose episode tick is a multiple of s (s = 1: every tick) and covers it and the next H - 1 ticks.
    Its ``state`` and ``features`` are its first tick's, and its ``base`` is the base plan's H-tick
    window as it stood at that tick (``TickRecord.base_window``, which the controller fills every tick
    when built with ``windows_every_tick``): what the head would have corrected had a boundary fallen
    there. A record is emitted once its H ticks have run; at the episode's end the ones still open are
    emitted padded. Each carries ``start_tick`` and ``chunk_index = start_tick // s``, and the replay
    pairs it with the record starting H ticks later (its TD bootstrap state). s records per chunk give
    H / s times as many (overlapping) records from the same episodes.

    After an episode that ended truncated (time limit or stop, not re-recorded) it sends one more record,
    the episode's final observation (:func:`build_final_observation`, no valid tick, ``chunk_index`` the
    one after the last record's): the learner pairs the episode's last record(s), h valid ticks each,
    with it as the bootstrap state s_{t+h}, and never samples it.

    Args:
        robot_id: the robot's id on the experience link.
        horizon: H.
        on_record: called with each finished record (must not block: hand it to a queue).
        stride: s, ticks between record starts, a divisor of H (0 or H: one record per chunk).
        images: observation -> camera key -> JPEG bytes (``runtime/links/images.py``), applied to each
            record's first tick; None: records carry no images.
        final_observations: send a truncated episode's final observation (the control loop reads it
            only for sinks that want it: ``wants_final_observation``). Off: the episode's last chunk
            has no bootstrap state on the learner (loss weight 0).

    Raises:
        ConfigError: a stride that does not divide H.
    """

    def __init__(self, robot_id: str, horizon: int, on_record: Callable[[ChunkRecord], None], stride: int = 0,
                 images: Callable[[dict[str, Any]], dict[str, bytes]] | None = None,
                 final_observations: bool = True) -> None:
        self.images = images
        self.wants_final_observation = bool(final_observations)
        self._final: FinalObservation | None = None
        self.robot_id = robot_id
        self.horizon = horizon
        self.stride = stride_of("record_stride", stride, horizon)
        self.on_record = on_record
        self._ticks: list[TickRecord] = []
        self._recent: deque[TickRecord] = deque(maxlen=horizon)
        self._episode = 0
        self._task = ""

    def start_episode(self, episode: int, task: str) -> None:
        """Reset the buffer."""
        self._episode, self._task, self._ticks = episode, task, []
        self._recent.clear()
        self._final = None

    def on_final_observation(self, final: FinalObservation) -> None:
        """Keep the episode's final observation; :meth:`end_episode` sends it after the last records."""
        if self.wants_final_observation and final.episode == self._episode:
            self._final = final

    def on_tick(self, record: TickRecord) -> None:
        """Buffer the tick; emit when a chunk (or, overlapping, the window ending here) is full."""
        if self.stride < self.horizon:
            self._recent.append(record)
            start = record.tick - self.horizon + 1
            if start >= 0 and start % self.stride == 0:
                self._emit_window(list(self._recent))
            return
        if self._ticks and record.chunk_index != self._ticks[0].chunk_index:
            self._emit()
        self._ticks.append(record)
        if len(self._ticks) == self.horizon:
            self._emit()

    def end_episode(self, result: EpisodeResult) -> None:
        """Emit the final partial chunk (or every window still open), then the final observation, if any
        (not for a re-recorded episode)."""
        if self.stride < self.horizon:
            ticks = list(self._recent)
            last = ticks[-1].tick if ticks else 0
            for i, t in enumerate(ticks):
                if t.tick % self.stride == 0 and t.tick > last - self.horizon + 1:
                    self._emit_window(ticks[i:])
            self._recent.clear()
        elif self._ticks:
            self._emit()
        final, self._final = self._final, None
        if final is not None and result.outcome != "rerecord" and final.tick > 0:
            index = -(-final.tick // self.stride)  # the index after the last record's: ceil(tick / s)
            rec = build_final_observation(final, self.horizon, self.robot_id, index, self._task)
            if self.images is not None:
                rec.images = self.images(final.observation)
            self.on_record(rec)

    def _emit(self) -> None:
        ticks, self._ticks = self._ticks, []
        rec = build_chunk(ticks, self.horizon, self.robot_id, self._episode, ticks[0].chunk_index, self._task)
        if self.images is not None:
            rec.images = self.images(ticks[0].observation)
        self.on_record(rec)

    def _emit_window(self, ticks: list[TickRecord]) -> None:
        first = ticks[0]
        if first.base_window is None:
            raise ValueError("overlapping chunk records need each tick's base plan window: build the "
                             "Controller with windows_every_tick=True")
        rec = build_chunk(ticks, self.horizon, self.robot_id, self._episode, first.tick // self.stride, self._task,
                          base=first.base_window, start_tick=first.tick)
        if self.images is not None:
            rec.images = self.images(first.observation)
        self.on_record(rec)
