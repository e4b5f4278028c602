"""Pace a robot session on its learner: after each episode, wait until the learner has trained enough.

A real robot spends time between episodes anyway (an operator resets the scene); a simulated one does
not, and on a machine where the robot and the learner share a few CPU cores the learner then makes
only a handful of updates per episode. ``link.learner_updates_per_episode = N`` fixes the ratio: once
the learner reports that it is training (its replay holds ``min_records``), the session waits after
every episode until the learner's update count reaches ``N`` more than the previous episode's target.
Updates the learner made while the episode ran count, so a learner that is fast enough never makes the
robot wait. The budget of a run is then explicit: ``episodes`` episodes and about ``N`` updates each.

The wait never outlives the learner: it ends early when the learner's heartbeats have stopped for
``silent_grace_s`` (10 s: a learner busy with a long update on a loaded machine can miss a heartbeat or
two without being gone, and giving up on it then would quietly shrink the run's update budget), after
``link.learner_wait_s``, or when the session is stopped. Once the learner has trained, every episode adds
its N updates to the target, also when a heartbeat is late at the episode's end. Progress comes from the weights link's
heartbeats (``WeightsStats.learner_progress()``), so it works with a remote learner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)


@dataclass
class PacingStats:
    """What the pacer did over a session.

    Attributes:
        waits: episodes after which the session waited.
        wait_s: total seconds spent waiting.
        wait_max_s: the longest single wait, seconds.
        timeouts: waits cut short by ``learner_wait_s``.
        learner_lost: waits cut short because the learner went silent.
        target: the learner update count the last wait aimed at (-1: never armed).
    """

    waits: int = 0
    wait_s: float = 0.0
    wait_max_s: float = 0.0
    timeouts: int = 0
    learner_lost: int = 0
    target: int = -1

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


class LearnerPacer:
    """Waits at episode ends until the learner has made ``updates_per_episode`` updates per episode.

    Args:
        updates_per_episode: N, learner updates owed per finished episode once the learner trains.
        wait_s: the longest wait after one episode, seconds.
        progress: returns ``(alive, training, step)`` from the learner's latest heartbeat.
        poll_s: how often the wait re-reads ``progress``, seconds.
        silent_grace_s: how long the learner may stay silent during a wait before it counts as lost.
    """

    def __init__(self, updates_per_episode: int, wait_s: float,
                 progress: Callable[[], tuple[bool, bool, int]], poll_s: float = 0.05,
                 silent_grace_s: float = 10.0) -> None:
        self.updates_per_episode = int(updates_per_episode)
        self.wait_s = float(wait_s)
        self.progress = progress
        self.poll_s = poll_s
        self.silent_grace_s = float(silent_grace_s)
        self.stats = PacingStats()
        self.waiting = False  # read by the status line

    def after_episode(self, stop: threading.Event | None = None) -> float:
        """Called once per finished episode: wait as described above; returns the seconds waited."""
        alive, training, step = self.progress()
        s = self.stats
        if self.updates_per_episode <= 0 or (s.target < 0 and not (alive and training)):
            return 0.0  # the learner is not training yet: the robot collects the data it needs
        s.target = (step if s.target < 0 else s.target) + self.updates_per_episode
        t0 = time.monotonic()
        silent_since: float | None = None
        self.waiting = True
        try:
            while step < s.target:
                if stop is not None and stop.is_set():
                    break
                if alive:
                    silent_since = None
                elif silent_since is None:
                    silent_since = time.monotonic()
                elif time.monotonic() - silent_since >= self.silent_grace_s:
                    s.learner_lost += 1
                    log.warning("learner silent for %.0f s while the session waited for it; going on",
                                self.silent_grace_s)
                    break
                if time.monotonic() - t0 >= self.wait_s:
                    s.timeouts += 1
                    log.warning("learner at update %d after %.0f s, short of %d; going on (link.learner_wait_s)",
                                step, self.wait_s, s.target)
                    break
                time.sleep(self.poll_s)
                alive, training, step = self.progress()
        finally:
            self.waiting = False
        waited = time.monotonic() - t0
        if waited > self.poll_s:
            s.waits += 1
        s.wait_s = round(s.wait_s + waited, 3)
        s.wait_max_s = round(max(s.wait_max_s, waited), 3)
        return waited
