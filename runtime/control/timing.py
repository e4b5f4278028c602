"""Deadline scheduling and timing statistics for fixed-rate loops.

Ticks are scheduled on absolute deadlines ``t0 + k * period`` (monotonic clock), so errors never
accumulate. Waiting sleeps until ``spin_s`` before the deadline, then spins, which keeps lateness
well under a millisecond on a loaded Linux machine where ``time.sleep`` alone overshoots by 0.1-2 ms.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


def percentile(values: list[float] | np.ndarray, q: float) -> float:
    """The q-th percentile of ``values`` (0.0 for an empty list)."""
    if len(values) == 0:
        return 0.0
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def wait_until(deadline: float, spin_s: float) -> None:
    """Block until ``time.perf_counter() >= deadline``: sleep, then spin for the last ``spin_s`` seconds."""
    remaining = deadline - time.perf_counter()
    if remaining > spin_s:
        time.sleep(remaining - spin_s)
    while time.perf_counter() < deadline:
        pass


@dataclass
class TimingSummary:
    """Lateness and section statistics of a run of ticks (all times in milliseconds)."""

    hz: float
    ticks: int
    p50_lateness_ms: float
    p99_lateness_ms: float
    max_lateness_ms: float
    overruns: int
    sections_p50_ms: dict[str, float]
    sections_p99_ms: dict[str, float]

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return dict(self.__dict__)


class TickTimer:
    """Fixed-rate tick scheduler with lateness, overrun and per-section timing.

    Usage::

        timer = TickTimer(hz=50)
        timer.start()
        while running:
            with timer.section("observe"):
                ...
            timer.wait()          # sleeps to the next deadline, records lateness

    Lateness of tick k is (time the tick started) - (its deadline), in ms, >= 0. An overrun is a tick
    whose work did not finish before the next deadline; after an overrun the schedule restarts from
    now (no burst of catch-up ticks).
    """

    def __init__(self, hz: float, spin_s: float = 0.002, paced: bool = True) -> None:
        if hz <= 0:
            raise ValueError(f"hz={hz} must be > 0")
        self.hz = hz
        self.period = 1.0 / hz
        self.spin_s = spin_s
        self.paced = paced
        self.lateness_ms: list[float] = []
        self.overruns = 0
        self.sections: dict[str, list[float]] = defaultdict(list)
        self._next_deadline = 0.0
        self.tick_start = 0.0

    def start(self) -> None:
        """Begin the schedule: the first tick's deadline is now."""
        self.tick_start = time.perf_counter()
        self._next_deadline = self.tick_start + self.period
        self.lateness_ms.append(0.0)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time a named part of the tick."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.sections[name].append((time.perf_counter() - t) * 1e3)

    def wait(self) -> float:
        """Wait for the next tick's deadline; return that tick's lateness in ms."""
        now = time.perf_counter()
        deadline = self._next_deadline
        if not self.paced:
            self.tick_start = now
            self._next_deadline = now + self.period
            self.lateness_ms.append(0.0)
            return 0.0
        if now > deadline:
            self.overruns += 1
            # Restart the schedule from now: do not burst to catch up.
            self.tick_start = now
            self._next_deadline = now + self.period
            lateness = (now - deadline) * 1e3
        else:
            wait_until(deadline, self.spin_s)
            self.tick_start = time.perf_counter()
            self._next_deadline = deadline + self.period
            lateness = (self.tick_start - deadline) * 1e3
        self.lateness_ms.append(lateness)
        return lateness

    def summary(self) -> TimingSummary:
        """Statistics of everything timed so far."""
        lat = self.lateness_ms
        return TimingSummary(
            hz=self.hz,
            ticks=len(lat),
            p50_lateness_ms=round(percentile(lat, 50), 4),
            p99_lateness_ms=round(percentile(lat, 99), 4),
            max_lateness_ms=round(max(lat) if lat else 0.0, 4),
            overruns=self.overruns,
            sections_p50_ms={k: round(percentile(v, 50), 4) for k, v in self.sections.items()},
            sections_p99_ms={k: round(percentile(v, 99), 4) for k, v in self.sections.items()},
        )
