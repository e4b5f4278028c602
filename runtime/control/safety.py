"""The safety filter between every action source and the robot.

Per tick, in order:
1. no fresh action (a starved policy, a stalled input) or non-finite input (NaN/inf anywhere): the
   robot is sent its *hold* action;
2. a watchdog: an action decided on an observation older than ``watchdog_s`` (the loop or an input
   stalled between the read and the send) is not sent either: the robot holds; and when no fresh
   action came for ``watchdog_s`` the stall is counted (``watchdog_trips`` once per stall,
   ``watchdog_holds`` per held tick);
3. the action is clipped to the robot's limits;
4. the change from the previous command is limited to ``max_delta`` per tick. The first command of
   an episode is limited too: :meth:`SafetyFilter.reset` anchors the limit at the robot's measured
   state (its hold action), so an episode can never start with a jump.

"Hold" is robot-specific (``Robot.hold_action``, handed in as ``hold_fn``): a position-controlled arm
holds where it is (its measured joint positions), a delta- or velocity-controlled robot (MetaWorld's
end-effector deltas) is sent zero motion. Repeating the last action would keep the latter moving.
Every intervention is counted so that a session summary can report it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tandem.core.validate import in_range, non_negative, positive


@dataclass
class SafetyConfig:
    """Safety filter settings.

    Attributes:
        max_delta: largest allowed change of any action element per tick, in action units
            (0 disables the rate limit).
        watchdog_s: hold the robot if no fresh action came for this many seconds.
        clip_to_limits: clip actions to the robot's action bounds.
        stop_hold_s: after a fault the loop cannot recover from (a bus that stays silent, a camera
            error ...), the robot holds its position with torque on for this many seconds before it is
            disconnected (a real arm's torque then goes off): time to support the arm. Simulated
            robots do not wait.
    """

    max_delta: float = 0.5
    watchdog_s: float = 0.5
    clip_to_limits: bool = True
    stop_hold_s: float = 5.0

    def __post_init__(self) -> None:
        non_negative("safety.max_delta", self.max_delta)
        positive("safety.watchdog_s", self.watchdog_s)
        in_range("safety.stop_hold_s", self.stop_hold_s, 0.0, 3600.0)


@dataclass
class SafetyStats:
    """Counts of what the filter changed."""

    nonfinite: int = 0
    clipped: int = 0
    rate_limited: int = 0
    watchdog_holds: int = 0  # ticks held because the input stalled (no fresh action, or a stale observation)
    watchdog_trips: int = 0  # stalls: the watchdog expired (counted once per stall)
    stale_observation: int = 0  # ticks held because their observation was older than watchdog_s

    def to_dict(self) -> dict[str, int]:
        """JSON-ready dict."""
        return dict(self.__dict__)


@dataclass
class SafetyFilter:
    """Stateful filter; call :meth:`reset` at the start of each episode.

    Args:
        config: the settings.
        low, high: action bounds, float32[A] (may hold +-inf).
        hold: the action that keeps the robot still, float32[A]: the robot's measured state (its
            ``hold_action(None)``); the first command is rate-limited from it.
        hold_fn: the robot's ``hold_action(last_sent)`` (None: repeat the last command, which only
            suits position-controlled robots). ``run_episode`` installs the robot's.
    """

    config: SafetyConfig
    low: np.ndarray
    high: np.ndarray
    hold: np.ndarray
    stats: SafetyStats = field(default_factory=SafetyStats)
    last: np.ndarray | None = None
    hold_fn: Callable[[np.ndarray | None], np.ndarray] | None = None
    _last_fresh: float = field(default_factory=time.monotonic)
    _stalled: bool = False

    def __post_init__(self) -> None:
        self.hold = np.asarray(self.hold, np.float32)
        if self.last is None:
            self.last = self.hold.copy()  # the rate limit's anchor before the first command

    def reset(self, hold: np.ndarray | None = None,
              hold_fn: Callable[[np.ndarray | None], np.ndarray] | None = None) -> None:
        """A new episode: the counters restart and the rate limit is anchored at ``hold`` (the robot's
        measured state), so the episode's first command moves at most ``max_delta`` from it."""
        if hold is not None:
            self.hold = np.asarray(hold, np.float32)
        if hold_fn is not None:
            self.hold_fn = hold_fn
        self.stats = SafetyStats()
        self.last = self.hold.copy()
        self._last_fresh = time.monotonic()
        self._stalled = False

    def hold_action(self) -> np.ndarray:
        """The action that keeps the robot where it is (robot-specific with ``hold_fn``)."""
        if self.hold_fn is not None:
            return np.asarray(self.hold_fn(self.last), np.float32).copy()
        return (self.last if self.last is not None else self.hold).copy()

    def filter(self, action: np.ndarray | None, now: float | None = None,
               obs_time: float | None = None) -> np.ndarray:
        """Return the safe version of ``action`` (float32[A]). ``None`` means no fresh action this tick.

        ``obs_time`` (same clock as ``now``): when the observation the action was decided on was read;
        an action on an observation older than ``watchdog_s`` is not sent (the robot holds).
        """
        now = time.monotonic() if now is None else now
        if action is not None and obs_time is not None and now - obs_time > self.config.watchdog_s:
            self.stats.stale_observation += 1
            action = None  # decided on a stale observation: as good as no action
        if action is None:
            if now - self._last_fresh > self.config.watchdog_s:
                self.stats.watchdog_holds += 1
                if not self._stalled:
                    self._stalled = True
                    self.stats.watchdog_trips += 1
            return self._commit(self._held())
        action = np.asarray(action, np.float32)
        if action.shape != self.hold.shape:
            raise ValueError(f"action shape {action.shape} != robot action shape {self.hold.shape}")
        if not np.all(np.isfinite(action)):
            self.stats.nonfinite += 1
            return self._commit(self._held())
        self._last_fresh = now
        self._stalled = False
        out = action
        if self.config.clip_to_limits:
            clipped = np.clip(out, self.low, self.high)
            if not np.array_equal(clipped, out):
                self.stats.clipped += 1
            out = clipped
        if self.config.max_delta > 0 and self.last is not None:  # always set after reset
            lo = self.last - self.config.max_delta
            hi = self.last + self.config.max_delta
            limited = np.clip(out, lo, hi)
            if not np.array_equal(limited, out):
                self.stats.rate_limited += 1
            out = limited
        return self._commit(out)

    def stalled(self, now: float | None = None) -> bool:
        """True if the watchdog has expired (no fresh action for ``watchdog_s``)."""
        now = time.monotonic() if now is None else now
        return now - self._last_fresh > self.config.watchdog_s

    def _held(self) -> np.ndarray:
        """The hold action: not clipped or rate-limited, it is where the robot is (or zero motion)."""
        return self.hold_action()

    def _commit(self, action: np.ndarray) -> np.ndarray:
        self.last = action.astype(np.float32, copy=True)
        return self.last.copy()
