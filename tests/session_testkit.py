"""Scripted operators and replay probes shared by the session fault tests (MetaWorld and the faked-bus SO-101).

- :class:`KillThenFinish` SIGKILLs the session's policy worker mid-episode and ends the episode once the
  restarted worker has driven it for a while.
- :class:`RerecordOnce` asks for one episode to be recorded again.
- :func:`live_episodes` lists the episode ids a learner's replay may still sample.
"""

from __future__ import annotations

import os
import signal

from tandem.teleop.operator import OperatorOutput
from tandem.value.replay import ReplayStore


def live_episodes(store: ReplayStore) -> list[int]:
    """The episode ids of every record the store may sample, sorted."""
    out = []
    for buf in store.buffers.values():
        out += buf.data["episode_id"][buf.live_rows()].tolist() if buf.size else []
    return sorted(out)


class RerecordOnce:
    """A scripted operator: the episode with id ``episode`` is re-recorded at tick ``tick``."""

    def __init__(self, episode: int = 1, tick: int = 25) -> None:
        self.target, self.tick, self.episode = episode, tick, -1

    def reset(self) -> None:
        self.episode += 1

    def step(self, observation, policy_action, tick):
        return OperatorOutput(events=("rerecord",) if (self.episode, tick) == (self.target, self.tick) else ())


class KillThenFinish:
    """A scripted operator: SIGKILLs the policy worker at tick ``kill_tick`` of the first episode; ends that
    episode ("failure") once ``after_gap`` ticks ran on a fresh plan after the hold, and the second at tick 20.
    It reads the ticks a sink collected (``ticks``): add it to ``session.sinks`` too."""

    def __init__(self, session, kill_tick: int = 10, after_gap: int = 15) -> None:
        self.session, self.kill_tick, self.after_gap = session, kill_tick, after_gap
        self.episode = -1
        self.killed_pid = None
        self.ticks = []

    # the sink side
    def start_episode(self, episode, task):
        pass

    def on_tick(self, record):
        self.ticks.append(record)

    def end_episode(self, result):
        pass

    # the operator side
    def reset(self):
        self.episode += 1

    def step(self, observation, policy_action, tick):
        if self.episode == 0 and tick == self.kill_tick:
            self.killed_pid = self.session.backend.process.pid
            os.kill(self.killed_pid, signal.SIGKILL)
        mine = [t for t in self.ticks if t.episode == self.episode]
        if self.episode == 0:
            starved = [t.tick for t in mine if t.starved and t.tick > self.kill_tick]
            fresh = [t for t in mine if starved and t.tick > starved[0] and not t.starved]
            end = len(fresh) >= self.after_gap
        else:
            end = tick >= 20
        return OperatorOutput(events=("failure",) if end else ())
