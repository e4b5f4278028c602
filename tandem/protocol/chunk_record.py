"""The unit of experience: one record per executed chunk of H ticks.

Records of an episode are linked by ``(robot_id, episode_id, chunk_index)``; the learner forms TD
tuples from consecutive records (the next record's ``state``/``features``/``base`` are s_{t+H} and
the base proposal there). A final partial chunk is padded to H with ``valid`` false.

A record with no valid tick (``valid`` all false) is a *final observation*: the robot sends one after an
episode that ended by a time limit or a stop (``truncated``), holding the observation after the
episode's last executed tick (``state``/``features``, ``base`` the base plan's H-tick window there,
``start_tick`` the tick after the last one). It is no experience of its own: the learner uses it only
as the bootstrap state of the episode's last record(s) and never samples it (:attr:`ChunkRecord.is_final_observation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

# name -> (dtype, shape expressed with symbols H, A, S, F); images are carried separately.
ARRAY_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "state": ("float32", ("S",)),
    "features": ("float16", ("F",)),
    "base": ("float32", ("H", "A")),
    "head": ("float32", ("H", "A")),
    "executed": ("float32", ("H", "A")),
    "reward": ("float32", ("H",)),
    "valid": ("bool", ("H",)),
    "intervention": ("bool", ("H",)),
    "takeover_start": ("bool", ("H",)),
    "obs_time": ("float64", ("H",)),
    "send_time": ("float64", ("H",)),
}


@dataclass
class ChunkRecord:
    """One executed chunk.

    Attributes:
        robot_id: which robot produced it.
        episode_id: episode index within the robot's session (unique per robot and session).
        chunk_index: position of the record in the episode (0, 1, ...): the chunk's index, or with
            overlapping records (``session.record_stride`` < H) the window's index, start_tick // stride.
        task: the language instruction.
        state: float32[S], proprio/sim state at the chunk's first tick.
        features: float16[F], base policy embedding of the observation at the first tick (F may be 0).
        base, head, executed: float32[H, A]; executed is after the safety filter (human actions too).
        reward, valid: float32[H], bool[H] (valid false past the episode's end; all false: a final
            observation, see the module docstring).
        intervention, takeover_start: bool[H].
        done: the episode ended in a true terminal within this chunk (no bootstrap).
        truncated: the episode ended by a time limit or a stop within this chunk (bootstrap).
        head_version, base_version: weights in use when the chunk started.
        obs_time, send_time: float64[H] wall clock seconds.
        images: optional JPEG bytes per camera key at the first tick.
        start_tick: episode tick of the first tick; -1 (records of one per chunk, and older logs):
            chunk_index * H. The TD target's bootstrap record is the one starting at start_tick + H; for
            a truncated episode's last record(s), with h valid ticks, the final observation starting at
            start_tick + h (a final observation always sets it).
        failed: the terminal in this chunk (``done``) ended the episode without success: an operator's
            failure mark, or the robot's terminal before success. Always false when ``done`` is false.
    """

    robot_id: str
    episode_id: int
    chunk_index: int
    task: str
    state: np.ndarray
    features: np.ndarray
    base: np.ndarray
    head: np.ndarray
    executed: np.ndarray
    reward: np.ndarray
    valid: np.ndarray
    intervention: np.ndarray
    takeover_start: np.ndarray
    done: bool
    truncated: bool
    head_version: int
    base_version: int
    obs_time: np.ndarray
    send_time: np.ndarray
    images: dict[str, bytes] = field(default_factory=dict)
    start_tick: int = -1
    failed: bool = False

    @property
    def horizon(self) -> int:
        """H."""
        return int(self.base.shape[0])

    @property
    def first_tick(self) -> int:
        """Episode tick of the record's first tick (``start_tick``, or chunk_index * H when unset)."""
        return int(self.start_tick) if self.start_tick >= 0 else int(self.chunk_index) * self.horizon

    @property
    def is_final_observation(self) -> bool:
        """No tick ran in it: a truncated episode's final observation, the bootstrap state of its last
        record(s), never a training sample itself (see the module docstring)."""
        return not bool(np.any(self.valid))

    @property
    def key(self) -> tuple[str, int, int]:
        """(robot_id, episode_id, chunk_index)."""
        return (self.robot_id, self.episode_id, self.chunk_index)

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields, by name, with their canonical dtypes."""
        return {name: np.asarray(getattr(self, name), dtype) for name, (dtype, _) in ARRAY_FIELDS.items()}

    def equals(self, other: ChunkRecord) -> bool:
        """Field-by-field equality (arrays compared exactly, NaN-safe)."""
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True):
                    return False
            elif a != b:
                return False
        return True
