"""Scripted operators and replay probes shared by the session fault tests (MetaWorld and the faked-bus SO-101).

- :class:`KillThenFinish` SIGKILLs the session's policy worker mid-episode and ends the episode once the
  restarted worker has driven it for a while.
- :class:`RerecordOnce` asks for one episode to be recorded again.
- :func:`live_episodes` lists the episode ids a learner's replay may still sample.
- :func:`dataset_without_rerecorded` and :func:`replay_without_rerecorded` read a re-recording session's
  LeRobotDataset and learner replay back and check that the re-recorded episode 1 is in neither.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np

from tandem.teleop.operator import OperatorOutput
from tandem.value.replay import ReplayStore, record_entries


def live_episodes(store: ReplayStore) -> list[int]:
    """The episode ids of every record the store may sample, sorted."""
    out = []
    for buf in store.buffers.values():
        out += buf.data["episode_id"][buf.live_rows()].tolist() if buf.size else []
    return sorted(out)


def dataset_without_rerecorded(root: Path, frames_per_episode: int) -> tuple[Any, list[dict]]:
    """Session episodes 0 and 2 kept, 1 re-recorded: lerobot loads two episodes of ``frames_per_episode``
    frames with contiguous indices, and the re-recorded episode's spool is gone. The frames (plain
    columns) and the ``tandem_episodes.jsonl`` entries, for the caller's own checks."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/dataset", root=root)
    assert ds.num_episodes == 2 and ds.num_frames == 2 * frames_per_episode
    frames = ds.hf_dataset.with_format(None)
    assert sorted(set(frames["episode_index"])) == [0, 1]
    assert frames["index"] == list(range(2 * frames_per_episode))
    entries = [json.loads(x) for x in (root / "meta" / "tandem_episodes.jsonl").read_text().splitlines()]
    assert [(e["episode_index"], e["session_episode"]) for e in entries] == [(0, 0), (1, 2)]
    assert not list((root / ".tandem" / "spool").iterdir())  # the re-recorded episode's spool is gone too
    return frames, entries


def replay_without_rerecorded(replay_dir: Path) -> tuple[int, int]:
    """The learner got episode 1's records, then one retraction: its replay (rebuilt from the durable log)
    holds episodes 0 and 2 only, retracted exactly the records it was sent and never samples episode 1.
    (records of episode 1 in the log, records the replay holds)."""
    logged = [(m.kind, r.episode_id if r is not None else m.meta.get("episode")) for m, r in record_entries(replay_dir)]
    sent_of_1 = sum(1 for kind, ep in logged if kind == "chunk" and ep == 1)
    assert sent_of_1 >= 1 and logged.count(("retract", 1)) == 1
    store = ReplayStore(replay_dir)
    try:
        assert set(live_episodes(store)) == {0, 2}
        assert store.counts["retracted"] == sent_of_1
        assert 1 not in store.sample(256, np.random.default_rng(1))["episode_id"]
        return sent_of_1, store.size
    finally:
        store.close()


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
