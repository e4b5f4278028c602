"""Pacing a session on its learner: the learner's progress rides its heartbeats to the robot, and the
pacer waits on it (real link server and weights subscriber on 127.0.0.1)."""

from __future__ import annotations

import threading
import time

import pytest
from links_testkit import ArrayWeights, wait_for

from tandem.core.errors import ConfigError
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.pacing import LearnerPacer
from tandem.runtime.links.weights import WeightsSubscriber
from tandem.value.server import LinkServer, ServerConfig

SCHEMA = {"w": ("float32", (4,))}


@pytest.fixture
def linked(tmp_path):
    """A learner link server (no store: progress only) and a robot's weights subscriber on loopback."""
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0, heartbeat_s=0.02), None).start()
    cfg = LinkConfig(robot_id="r1", experience_port=server.experience_port, weights_port=server.weights_port,
                     spool_dir=str(tmp_path / "spool"), heartbeat_s=0.02, timeout_s=0.3)
    sub = WeightsSubscriber(cfg, {"head": ArrayWeights(SCHEMA)}).start()
    state = {"server": server}
    try:
        yield state, sub
    finally:
        sub.close()
        state["server"].stop()


def test_heartbeat_carries_the_learners_progress(linked):
    state, sub = linked
    assert wait_for(lambda: sub.stats.learner_alive, 5)
    assert sub.stats.learner_step == 0 and not sub.stats.learner_training
    state["server"].progress = {"step": 1234, "training": True}
    assert wait_for(lambda: sub.stats.learner_step == 1234 and sub.stats.learner_training, 5)


def test_pacer_waits_for_the_owed_updates_and_counts_those_made_during_the_episode(linked):
    state, sub = linked
    server = state["server"]
    pacer = LearnerPacer(50, wait_s=30, progress=sub.stats.learner_progress, poll_s=0.01)
    assert wait_for(lambda: sub.stats.learner_alive, 5)
    assert pacer.after_episode() == 0.0 and pacer.stats.target == -1  # not training yet: no wait

    server.progress = {"step": 10, "training": True}
    assert wait_for(lambda: sub.stats.learner_training, 5)
    seen: list[int] = []
    done = threading.Event()

    def learner() -> None:  # stands in for the learner loop, which sets progress after each update
        step = 10
        while not done.is_set() and step < 200:
            step += 1
            server.progress = {"step": step, "training": True}
            seen.append(step)
            time.sleep(0.002)

    t = threading.Thread(target=learner)
    t.start()
    try:
        pacer.after_episode()
        assert pacer.stats.target == 60 and sub.stats.learner_step >= 60
        pacer.after_episode()
        assert pacer.stats.target == 110 and sub.stats.learner_step >= 110
    finally:
        done.set()
        t.join()
    # a learner already past the next target (it trained while the episode ran) costs no wait
    server.progress = {"step": 500, "training": True}
    assert wait_for(lambda: sub.stats.learner_step == 500, 5)
    assert pacer.after_episode() < 0.05 and pacer.stats.target == 160
    assert pacer.stats.waits == 2 and pacer.stats.timeouts == 0 and pacer.stats.learner_lost == 0


def test_pacer_gives_up_on_a_silent_learner_and_on_its_timeout(linked):
    state, sub = linked
    server = state["server"]
    server.progress = {"step": 5, "training": True}
    assert wait_for(lambda: sub.stats.learner_training and sub.stats.learner_alive, 5)
    pacer = LearnerPacer(10_000, wait_s=0.3, progress=sub.stats.learner_progress, poll_s=0.01)
    pacer.after_episode()
    assert pacer.stats.timeouts == 1 and pacer.stats.learner_lost == 0

    pacer = LearnerPacer(10_000, wait_s=60, progress=sub.stats.learner_progress, poll_s=0.01, silent_grace_s=0.5)
    stopper = threading.Timer(0.2, server.stop)  # the learner vanishes mid-wait
    stopper.start()
    try:
        t0 = time.monotonic()
        pacer.after_episode()
        assert time.monotonic() - t0 < 30  # ended by the silence (grace 0.5 s), not by wait_s
        assert pacer.stats.learner_lost == 1 and pacer.stats.timeouts == 0
    finally:
        stopper.join()

    stop = threading.Event()
    stop.set()
    pacer = LearnerPacer(10_000, wait_s=60, progress=lambda: (True, True, 0), poll_s=0.01)
    pacer.after_episode(stop)  # a stopped session never waits
    assert pacer.stats.timeouts == 0 and pacer.stats.learner_lost == 0


def test_a_learner_that_misses_heartbeats_while_busy_still_gets_its_updates():
    """A learner on a loaded machine goes silent for a moment (a long update, a starved link thread): the
    pacer keeps waiting through the gap, and the next episode still adds its updates to the target."""
    clock = {"t0": time.monotonic()}

    def progress():  # silent between 0.1 s and 0.4 s; training at 100 updates/s
        t = time.monotonic() - clock["t0"]
        return (not 0.1 <= t < 0.4, True, int(100 * t))

    pacer = LearnerPacer(50, wait_s=30, progress=progress, poll_s=0.01, silent_grace_s=2.0)
    pacer.after_episode()  # target 50 at t = 0.5 s: waits through the silent gap
    assert pacer.stats.learner_lost == 0 and pacer.stats.timeouts == 0 and progress()[2] >= 50
    clock["t0"] = time.monotonic() - 0.15  # the next episode ends while a heartbeat is late
    pacer.after_episode()
    assert pacer.stats.target == 100 and pacer.stats.learner_lost == 0


def test_pacing_settings_are_validated():
    with pytest.raises(ConfigError, match="learner_updates_per_episode"):
        LinkConfig(learner_updates_per_episode=-1)
    with pytest.raises(ConfigError, match="learner_wait_s"):
        LinkConfig(learner_wait_s=0)
