"""SIGKILL the learner in the middle of a real-time MetaWorld session, restart it: nothing lost, nothing twice.

The learner is a real ``tandem learn`` subprocess; the robot is a real Session (MuJoCo, scripted expert,
``robot.realtime=true``) whose chunk records go through the ExperienceLink and whose boundary callbacks
swap in the weights the learner publishes. The replacement learner is started ahead as a hot standby
(``learner.bind_retry_s``: it waits for the ports): in deployment the learner runs on another machine,
and here its start-up (importing torch) would otherwise compete with the control loop for the same two
cores, which would measure this machine, not the link.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from links_testkit import ArrayWeights, free_port, wait_for

from tandem.hardware.features import STATE_KEY
from tandem.runtime.config import compose_run
from tandem.runtime.links.chunks import ChunkAssembler
from tandem.runtime.session import Session
from tandem.value.objectives.base import ObjectiveConfig
from tandem.value.objectives.chunk_reward import chunk_reward_schema
from tandem.value.replay import record_entries

HORIZON = 10


class Learner:
    """A ``tandem learn`` subprocess whose output is collected by a thread."""

    def __init__(self, store: Path, exp_port: int, w_port: int, standby: bool = False) -> None:
        cmd = [
            sys.executable, "-m", "tandem.cli", "learn", f"learner.experience_port={exp_port}",
            f"learner.weights_port={w_port}", f"learner.store_dir={store}", "learner.device=cpu",
            "learner.min_records=4", "learner.batch_size=8", "learner.publish_every_updates=2",
            "learner.max_updates_per_s=20", "learner.objective.hidden=16", "learner.status_every_s=1",
            f"learner.bind_retry_s={300 if standby else 0}",
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # the learner normally runs on another machine; here it shares two cores with the robot, so it
        # runs niced and the robot's control loop keeps its CPU
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     preexec_fn=lambda: os.nice(5))
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.waiting = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("tandem learn: ready"):
                self.ready.set()
            if "port busy" in line:
                self.waiting.set()

    def wait_ready(self, timeout: float = 90) -> None:
        assert self.ready.wait(timeout), "".join(self.lines[-30:])

    def wait_standing_by(self, timeout: float = 90) -> None:
        assert self.waiting.wait(timeout), "".join(self.lines[-30:])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        self.reader.join(10)
        return rc


class TickCount:
    def __init__(self) -> None:
        self.ticks = 0
        self.late = []

    def start_episode(self, episode, task):
        pass

    def on_tick(self, record):
        self.ticks += 1
        self.late.append((round(record.lateness_ms, 2), round(time.monotonic(), 3), record.tick))

    def end_episode(self, result):
        pass


def run_killed_session(tmp_path: Path, ticks: int, kills: int, episodes: int = 1, extra_episodes: int = 20) -> None:
    """At least ``episodes`` episodes of ``ticks`` ticks; the learner is SIGKILLed ``kills`` times along the way.

    The session is real time, the learners are not: on a loaded machine the kills, the standby's recovery
    and the first published weights can take longer than ``episodes`` episodes. The session then goes on,
    episode by episode (at most ``extra_episodes`` more), until all of them have happened: the checks below
    wait on those events, not on a fixed number of episodes.
    """
    exp_port, w_port = free_port(), free_port()
    store = tmp_path / "learner"
    learner = Learner(store, exp_port, w_port)
    learner.wait_ready()
    standby = Learner(store, exp_port, w_port, standby=True)
    standby.wait_standing_by()
    cfg = compose_run([
        "policy=scripted", "robot.realtime=true", "robot.cameras=[]",
        f"session.max_episode_steps={ticks}", f"session.horizon={HORIZON}", "loop.stop_on_success=false",
        f"session.episodes={episodes + extra_episodes}",
        "link.enabled=true", "link.robot_id=sim0", f"link.experience_port={exp_port}", f"link.weights_port={w_port}",
        f"link.spool_dir={tmp_path / 'spool'}", "link.drain_s=60", "link.timeout_s=0.5",
    ])
    expected = []
    counter = TickCount()
    session = Session(cfg, sinks=[ChunkAssembler("sim0", HORIZON, expected.append), counter])
    session.build()
    state_dim = session.robot.observation_features[STATE_KEY].shape[0]
    action_dim = session.robot.action_feature.shape[0]
    critic = ArrayWeights(chunk_reward_schema(ObjectiveConfig(hidden=16), state_dim, HORIZON, action_dim))
    session.weights_consumers = {"critic": critic}
    events: dict[str, list] = {"kills": [], "ready": []}
    learners = [learner, standby]

    def acked_at_least(n: int) -> bool:
        return session.experience_link is not None and session.experience_link.stats.acked >= n

    def killer() -> None:
        for k in range(kills):
            if not wait_for(lambda n=5 * (k + 1): acked_at_least(n), 60):
                return
            learners[-2].kill()  # SIGKILL: no clean shutdown, no final fsync
            events["kills"].append((counter.ticks, session.experience_link.stats.acked, round(time.monotonic(), 3)))
            learners[-1].wait_ready()  # the standby takes the ports over and recovers the store
            events["ready"].append((counter.ticks, round(time.monotonic(), 3)))
            if k + 1 < kills:
                learners.append(Learner(store, exp_port, w_port, standby=True))
                learners[-1].wait_standing_by()

    def enough(result) -> None:
        """After each episode: end the session once it ran ``episodes`` episodes, every kill happened, the
        last learner took over, and the robot swapped in weights a learner published (the critic's version)."""
        ran = counter.ticks // ticks
        if ran >= episodes and len(events["ready"]) == kills and critic.version >= 1:
            session.stop.set()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        summary = session.run(on_episode=enough)
        load = os.getloadavg()[0]
        thread.join(120)
    finally:
        rcs = [lrn.terminate() for lrn in reversed(learners)][::-1]
    episodes = len(summary.episodes)
    assert len(events["kills"]) == kills, events
    assert all(k[0] < ticks * episodes for k in events["kills"]), events  # killed mid-session
    assert rcs[-1] == 0, "".join(learners[-1].lines[-30:])

    # the robot never stopped ticking, and the link never held up the control thread
    links = summary.links
    assert [e["steps"] for e in summary.episodes] == [ticks] * episodes and counter.ticks == ticks * episodes
    exp, wts = links["experience"], links["weights"]
    assert exp["send_cpu_max_ms"] < 0.5 and wts["apply_cpu_max_ms"] < 0.5, (exp, wts)
    timings = [e["timing"] for e in summary.episodes]
    detail = str((timings, events, sorted(counter.late)[-8:], load, exp))
    # A link that waited on the dead learner would stall the loop for the whole restart (seconds). Isolated late
    # ticks of a few tens of ms are the shared CI machine's scheduler, not the link (CI saw one 31 ms tick
    # while the link's own send took 0.01 ms); tick lateness is measured in `tandem bench links`, not here.
    # (A p99 bound here failed once in CI at 10.6 ms while the link's sends took at most 0.03 ms: another
    # process on the two cores, not the link; the link's own costs are the bounds below.)
    assert all(t["max_lateness_ms"] < 250.0 for t in timings), detail
    if load < os.cpu_count():
        assert exp["send_max_ms"] < 5.0 and wts["apply_max_ms"] < 5.0, detail
    assert links["all_acked"], links
    assert links["experience"]["reconnects"] + links["experience"]["learner_changes"] >= kills

    # every chunk record is in the replay store exactly once, intact
    stored = [rec for _, rec in record_entries(store / "replay") if rec is not None]
    assert len(expected) == episodes * (-(-ticks // HORIZON) + 1)  # + each time limit's final observation
    assert [r.key for r in stored] == [r.key for r in expected]
    assert all(a.equals(b) for a, b in zip(stored, expected, strict=True))

    # the learner's weights reached the robot and were swapped in at chunk boundaries
    assert links["weights"]["applied"] >= 1 and critic.version >= 1, (str(links["weights"]), "".join(learners[-1].lines[-20:]))


def test_learner_sigkill_mid_session_loses_nothing(tmp_path):
    run_killed_session(tmp_path, ticks=300, kills=1)


@pytest.mark.slow
def test_learner_killed_three_times_in_a_long_session(tmp_path):
    run_killed_session(tmp_path, ticks=450, kills=3, episodes=3)
