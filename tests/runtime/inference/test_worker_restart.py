"""A killed policy worker: the robot holds while the worker is restarted, then the episode goes on with the new
worker; restarts are bounded (``policy_link.max_restarts``) and counted (summary, episode, dataset).

Real worker processes (SIGKILLed by their pid), real pyzmq sockets on 127.0.0.1, real MuJoCo.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
from session_testkit import KillThenFinish

from tandem.core.errors import ConfigError
from tandem.hardware.metaworld_robot import MetaWorldRobotConfig
from tandem.policies.scripted import ScriptedPolicyConfig
from tandem.runtime.config import compose_run
from tandem.runtime.inference.client import PolicyLinkConfig, ProcessBackend
from tandem.runtime.session import Session, SessionAborted

OBS = {"observation.state": np.zeros(39, np.float32)}


def wait_replies(backend, seconds):
    """Poll ``backend`` until a reply arrives (or ``seconds`` pass); the replies."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = backend.poll(0.05)
        if got:
            return got
    return []


def test_a_killed_worker_is_restarted_and_answers_the_request_the_dead_one_never_did():
    backend = ProcessBackend(MetaWorldRobotConfig(cameras=[]), ScriptedPolicyConfig(task="reach-v3"),
                             PolicyLinkConfig(warmup=0, max_restarts=1))
    try:
        old = backend.process
        got = []
        for _ in range(40):  # the first sends are dropped until the socket has connected (IMMEDIATE)
            backend.submit(0, OBS, "reach")
            got = wait_replies(backend, 0.5)
            if got:
                break
        assert [rid for rid, _ in got][:1] == [0]
        wait_replies(backend, 0.3)  # answers to the repeated first request
        os.kill(old.pid, signal.SIGKILL)
        backend.submit(1, OBS, "reach")  # in flight to (or lost with) the dead worker: asked once only
        old.join(5)  # submitted before the join: a restart noticed first would answer it without a resend
        t0 = time.monotonic()
        got = wait_replies(backend, 120)  # never raises: the worker is restarted in the background
        assert [rid for rid, _ in got] == [1], got
        assert backend.process.pid != old.pid and backend.process.is_alive()
        assert backend.restarts == 1 and backend.fault_stats() == {"worker_restarts": 1}
        assert backend.resent == 1
        assert time.monotonic() - t0 < 120
        # the restart budget is spent: the next death ends it
        os.kill(backend.process.pid, signal.SIGKILL)
        backend.process.join(5)
        time.sleep(0.3)
        with pytest.raises(RuntimeError, match=r"worker process exited with code -9 \(after 1 restarts; "
                                               r"policy_link.max_restarts=1\)"):
            backend.poll(0.0)
    finally:
        backend.close()
    assert not backend.process.is_alive() and not old.is_alive()


def test_max_restarts_is_validated():
    with pytest.raises(ConfigError, match="policy_link.max_restarts"):
        PolicyLinkConfig(max_restarts=-1)
    with pytest.raises(ConfigError, match="policy_link.max_restarts"):
        compose_run(["policy=scripted", "policy_link.max_restarts=101"])


def test_a_session_holds_the_robot_while_the_killed_worker_restarts_and_finishes_its_episodes(tmp_path):
    cfg = compose_run(["policy=scripted", "robot.cameras=[]", "robot.task=reach-v3", "session.backend=process",
                       "robot.realtime=true", "robot.fps=20", "session.episodes=2", "robot.max_episode_steps=500",
                       "loop.stop_on_success=false", "policy_link.max_restarts=2",
                       # 1 s chunks of 0.1 s inferences; 20 warm-up inferences make a restart last over 2 s
                       "policy.chunk_length=20", "policy.latency_s=0.1", "policy_link.warmup=20",
                       f"session.run_dir={tmp_path}"])
    session = Session(cfg)
    session.build()
    script = KillThenFinish(session)
    session.controller.operator = script
    session.sinks.append(script)
    first_pid = session.backend.process.pid
    summary = session.run()

    assert summary.error == "" and len(summary.episodes) == 2, summary.error
    assert script.killed_pid == first_pid
    assert session.backend.process.pid != first_pid  # a new worker finished the session
    assert summary.faults["worker_restarts"] == 1
    assert summary.episodes[0]["faults"] == {"worker_restarts": 1} and "worker_restarts" not in summary.episodes[1]["faults"]

    ep0 = [t for t in script.ticks if t.episode == 0]
    starved = [t.tick for t in ep0 if t.starved and t.tick > script.kill_tick]
    gap_start = starved[0]
    gap_end = next(t.tick for t in ep0 if t.tick > gap_start and not t.starved)  # the new worker's first chunk
    gap = [t for t in ep0 if gap_start <= t.tick < gap_end]
    assert len(gap) >= 10, len(gap)  # a restart takes seconds: the robot held for many ticks (20 Hz)
    gripper = ep0[gap_start - 1].action[3]
    for t in gap:  # held: zero motion for MetaWorld's end-effector deltas, the gripper as it was
        assert t.starved and np.array_equal(t.action, np.array([0, 0, 0, gripper], np.float32)), (t.tick, t.action)
    after = [t for t in ep0 if t.tick >= gap_end]
    assert len(after) >= 15 and sum(not t.starved for t in after) >= 15  # the episode went on with the new worker
    assert summary.episodes[0]["starved_ticks"] >= len(gap)
    assert summary.episodes[0]["safety"]["watchdog_trips"] >= 1  # the hold outlasted the watchdog: counted

    # the dataset logs the event with its episode
    entries = [json.loads(x) for x in (tmp_path / "dataset" / "meta" / "tandem_episodes.jsonl").read_text().splitlines()]
    assert [e["faults"].get("worker_restarts", 0) for e in entries] == [1, 0]
    assert entries[0]["safety"]["watchdog_trips"] >= 1


def test_a_dead_worker_with_its_restarts_used_up_ends_the_session_in_a_controlled_stop(tmp_path):
    cfg = compose_run(["policy=scripted", "robot.cameras=[]", "robot.task=reach-v3", "session.backend=process",
                       "robot.realtime=true", "robot.fps=20", "session.episodes=3", "robot.max_episode_steps=400",
                       "loop.stop_on_success=false", "policy_link.warmup=0", "policy_link.max_restarts=0",
                       "policy.chunk_length=20",
                       "record.enabled=false"])
    session = Session(cfg)
    session.build()
    script = KillThenFinish(session)
    session.controller.operator = script
    session.sinks.append(script)
    with pytest.raises(SessionAborted, match="worker process exited with code -9") as info:
        session.run()
    summary = info.value.summary
    assert summary.episodes == [] and summary.faults["controlled_stops"] == 1
    assert summary.faults["worker_restarts"] == 0
    assert not session.backend.process.is_alive()
