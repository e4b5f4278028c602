"""A compact live status line for a robot session in the terminal.

One line, e.g.::

    ep 3/10 t 42 | success 2/2 (100%) | takeovers 1 | late p99 0.41 ms | head v7 | learner up, heard 0.2 s ago, acked 120

- On a TTY it is redrawn in place (``\\r``) at most every ``period_s`` (0.5 s).
- On anything else (a pipe, a log file) it is printed as a plain line every ``plain_period_s`` (5 s).

:class:`StatusLine` is a TickSink whose ``on_tick`` only updates counters (a few integer and float
writes into preallocated storage: it never formats, never writes, never blocks). Drawing happens on its
own thread (:meth:`start`) or in :meth:`maybe_render` when called by hand (tests, with a fake clock).
``on_episode(result)`` is the session's per-episode hook (the same as ``end_episode``; counting an
episode twice is harmless). To print a line of your own without garbling the status line, use
:meth:`println`.

Fields: episode i/N (1-based) and the tick within it; episodes that ended in success so far (k/n and
%); operator takeovers (finished episodes plus the current one); the p99 of the loop lateness over the
last ``window`` ticks (ms); the edit head's weights version of the last tick; the learner link, from
``link_stats()`` (the experience link's ``ExperienceStats.to_dict()``: ``connected``,
``last_heard_s`` (age of the last message from the learner, s; -1 = never), ``acked``, and optionally
``learner_step`` (the learner's update count) and ``waiting`` (the session waits for the learner)).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from tandem.core.validate import in_range, one_of
from tandem.runtime.control.loop import EpisodeResult, TickRecord

STREAMS = ("stdout", "stderr")


@dataclass
class StatusLineConfig:
    """The terminal status line.

    Attributes:
        enabled: show it.
        period_s: redraw interval on a TTY, s (the line changes at most this often).
        plain_period_s: interval between plain lines when the stream is not a TTY, s.
        stream: "stdout" or "stderr".
        window: ticks over which the lateness p99 is computed (rolling).
    """

    enabled: bool = True
    period_s: float = 0.5
    plain_period_s: float = 5.0
    stream: str = "stdout"
    window: int = 1000

    def __post_init__(self) -> None:
        in_range("status_line.period_s", self.period_s, 0.05, 60.0)
        in_range("status_line.plain_period_s", self.plain_period_s, 0.05, 3600.0)
        one_of("status_line.stream", self.stream, STREAMS)
        in_range("status_line.window", self.window, 1, 10_000_000)


class StatusLine:
    """A TickSink that keeps session counters and draws them as one terminal line.

    Args:
        config: StatusLineConfig.
        episodes: N, the number of episodes the session will run (0: unknown).
        link_stats: returns the learner link's stats dict (or None: no link shown).
        stream: where to write (default: ``config.stream``'s ``sys.stdout`` / ``sys.stderr``).
        tty: redraw in place (True) or print plain lines (False); default: ``stream.isatty()``.
        clock: monotonic seconds (tests pass a fake one).

    Call :meth:`start` to draw from a background thread and :meth:`close` at the end (``finally``).
    """

    def __init__(
        self,
        config: StatusLineConfig,
        episodes: int = 0,
        link_stats: Callable[[], dict | None] | None = None,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.episodes = int(episodes)
        self.link_stats = link_stats
        self.stream = stream if stream is not None else getattr(sys, config.stream)
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if isatty is not None else False
        self.tty = tty
        self.clock = clock
        self._lateness = np.zeros(config.window, np.float64)
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_draw = -float("inf")
        self._width = 0  # characters of the line now on screen (TTY)
        self._closed = False
        # counters (written by the control / session thread; read by the drawing thread)
        self.ticks = 0
        self.episode = -1
        self.tick = -1
        self.head_version = -1
        self.live_takeovers = 0
        self._results: dict[int, tuple[bool, int]] = {}  # episode -> (success, takeovers)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> StatusLine:
        """Draw from a background thread (every ``period_s`` on a TTY, ``plain_period_s`` otherwise)."""
        self._thread = threading.Thread(target=self._run, name="status-line", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread, draw the final state once, end the line on a TTY. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._thread is not None:
                self._stop.set()
                self._thread.join(2.0)
        finally:
            self.maybe_render(force=True)
            if self.tty:
                with self._write_lock:
                    self._write("\n")
                    self._width = 0

    def _run(self) -> None:
        step = min(self.config.period_s, 0.1)
        while not self._stop.wait(step):
            self.maybe_render()

    # -- TickSink -------------------------------------------------------------------------------
    def start_episode(self, episode: int, task: str) -> None:
        """An episode begins."""
        self.episode = episode
        self.tick = -1
        self.live_takeovers = 0

    def on_tick(self, record: TickRecord) -> None:
        """Counters only: tick, lateness sample, head version, takeovers."""
        n = self.ticks
        self._lateness[n % self._lateness.shape[0]] = record.lateness_ms
        self.ticks = n + 1
        self.episode = record.episode
        self.tick = record.tick
        self.head_version = record.head_version
        if record.takeover_start:
            self.live_takeovers += 1

    def end_episode(self, result: EpisodeResult) -> None:
        """The episode ended: its outcome counts towards success and takeovers."""
        self._results[result.episode] = (bool(result.success), int(result.takeovers))
        if result.episode == self.episode:
            self.live_takeovers = 0

    on_episode = end_episode  # Session.run(on_episode=...) hook; idempotent with end_episode

    # -- drawing --------------------------------------------------------------------------------
    def lateness_p99_ms(self) -> float | None:
        """p99 of the loop lateness over the last ``window`` ticks (ms); None before the first tick."""
        n = min(self.ticks, self._lateness.shape[0])
        if n == 0:
            return None
        return float(np.percentile(self._lateness[:n], 99))

    def render(self) -> str:
        """The status line's text (no ``\\r`` / newline)."""
        results = list(self._results.values())
        done = len(results)
        wins = sum(success for success, _ in results)
        takeovers = sum(t for _, t in results) + self.live_takeovers
        if self.episode < 0:
            ep = f"ep -/{self.episodes}" if self.episodes else "ep -"
        else:
            ep = f"ep {self.episode + 1}/{self.episodes}" if self.episodes else f"ep {self.episode + 1}"
            if self.tick >= 0:
                ep += f" t {self.tick}"
        rate = f" ({wins / done:.0%})" if done else ""
        p99 = self.lateness_p99_ms()
        parts = [
            ep,
            f"success {wins}/{done}{rate}",
            f"takeovers {takeovers}",
            "late p99 -" if p99 is None else f"late p99 {p99:.2f} ms",
            "head -" if self.head_version < 0 else f"head v{self.head_version}",
        ]
        link = self._link_text()
        if link:
            parts.append(link)
        return " | ".join(parts)

    def _link_text(self) -> str:
        if self.link_stats is None:
            return ""
        try:
            stats = self.link_stats()
        except Exception as exc:  # the status line must never break the session
            return f"learner ? ({type(exc).__name__})"
        if not stats:
            return ""
        state = "up" if stats.get("connected") else "down"
        heard = float(stats.get("last_heard_s", -1.0))
        heard_text = "never heard" if heard < 0 else f"heard {heard:.1f} s ago"
        text = f"learner {state}, {heard_text}, acked {int(stats.get('acked', 0))}"
        if int(stats.get("learner_step", -1)) >= 0:
            text += f", update {int(stats['learner_step'])}"
        return text + (" | waiting for the learner" if stats.get("waiting") else "")

    def maybe_render(self, force: bool = False) -> bool:
        """Draw the line if its period has passed since the last draw (or ``force``). True if drawn."""
        now = self.clock()
        period = self.config.period_s if self.tty else self.config.plain_period_s
        if not force and now - self._last_draw < period:
            return False
        text = self.render()
        with self._write_lock:
            self._last_draw = now
            if self.tty:
                pad = max(self._width - len(text), 0)
                self._write("\r" + text + " " * pad)
                self._width = len(text)
            else:
                self._write(text + "\n")
        return True

    def println(self, text: str) -> None:
        """Print a line of text (e.g. an episode summary) above the status line, then redraw it."""
        with self._write_lock:
            if self.tty and self._width:
                self._write("\r" + " " * self._width + "\r")
                self._width = 0
            self._write(text + "\n")
        if self.tty:
            self.maybe_render(force=True)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe / stream: the status line is best effort
            pass


def make_status_line(
    config: StatusLineConfig, episodes: int, link_stats: Callable[[], dict | None] | None = None
) -> StatusLine | None:
    """A started StatusLine when ``config.enabled``, else None."""
    if not config.enabled:
        return None
    return StatusLine(config, episodes, link_stats).start()
