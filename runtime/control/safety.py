"""The safety filter between every action source and the robot.

Per tick, in order:
1. non-finite input (NaN/inf anywhere) is rejected: the robot holds its last safe action;
2. the action is clipped to the robot's limits;
3. the change from the last sent action is limited to ``max_delta`` per tick;
4. a watchdog: if no fresh action arrived for ``watchdog_s`` seconds (a stalled loop, a stalled
   input), the filter returns the hold action until one does.
Every intervention is counted so that a session summary can report it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tandem.core.validate import non_negative, positive


@dataclass
class SafetyConfig:
    """Safety filter settings.

    Attributes:
        max_delta: largest allowed change of any action element per tick, in action units
            (0 disables the rate limit).
        watchdog_s: hold the robot if no fresh action came for this many seconds.
        clip_to_limits: clip actions to the robot's action bounds.
    """

    max_delta: float = 0.5
    watchdog_s: float = 0.5
    clip_to_limits: bool = True

    def __post_init__(self) -> None:
        non_negative("safety.max_delta", self.max_delta)
        positive("safety.watchdog_s", self.watchdog_s)


@dataclass
class SafetyStats:
    """Counts of what the filter changed."""

    nonfinite: int = 0
    clipped: int = 0
    rate_limited: int = 0
    watchdog_holds: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-ready dict."""
        return dict(self.__dict__)


@dataclass
class SafetyFilter:
    """Stateful filter; call :meth:`reset` at the start of each episode.

    Args:
        config: the settings.
        low, high: action bounds, float32[A] (may hold +-inf).
        hold: the action that keeps the robot still, float32[A] (used before any action was sent).
    """

    config: SafetyConfig
    low: np.ndarray
    high: np.ndarray
    hold: np.ndarray
    stats: SafetyStats = field(default_factory=SafetyStats)
    last: np.ndarray | None = None
    _last_fresh: float = field(default_factory=time.monotonic)

    def reset(self, hold: np.ndarray | None = None) -> None:
        """Forget the last action and the counters (a new episode starts from the hold action)."""
        if hold is not None:
            self.hold = np.asarray(hold, np.float32)
        self.stats = SafetyStats()
        self.last = None
        self._last_fresh = time.monotonic()

    def hold_action(self) -> np.ndarray:
        """The action that keeps the robot where it is."""
        return (self.last if self.last is not None else self.hold).copy()

    def filter(self, action: np.ndarray | None, now: float | None = None) -> np.ndarray:
        """Return the safe version of ``action`` (float32[A]). ``None`` means no fresh action this tick."""
        now = time.monotonic() if now is None else now
        if action is None:
            if now - self._last_fresh > self.config.watchdog_s:
                self.stats.watchdog_holds += 1
            return self._commit(self.hold_action())
        action = np.asarray(action, np.float32)
        if action.shape != self.hold.shape:
            raise ValueError(f"action shape {action.shape} != robot action shape {self.hold.shape}")
        if not np.all(np.isfinite(action)):
            self.stats.nonfinite += 1
            return self._commit(self.hold_action())
        self._last_fresh = now
        out = action
        if self.config.clip_to_limits:
            clipped = np.clip(out, self.low, self.high)
            if not np.array_equal(clipped, out):
                self.stats.clipped += 1
            out = clipped
        if self.config.max_delta > 0 and self.last is not None:
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

    def _commit(self, action: np.ndarray) -> np.ndarray:
        self.last = action.astype(np.float32, copy=True)
        return self.last.copy()
