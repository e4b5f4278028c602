"""Tick sinks for tests that run a session."""

from __future__ import annotations


class Collect:
    """A TickSink that keeps every tick (``ticks``) of every episode and the episodes it saw end (``ended``)."""

    def __init__(self) -> None:
        self.ticks = []
        self.ended = []

    def start_episode(self, episode, task) -> None:
        pass

    def on_tick(self, record) -> None:
        self.ticks.append(record)

    def end_episode(self, result) -> None:
        self.ended.append(result.episode)
