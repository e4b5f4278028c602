"""Interleaved autonomous evaluation (session.eval_every): no operator, unseen scenes, nothing sent or
recorded, the same scenes each round, and the session's headline figures."""

from __future__ import annotations

import pytest
from sinks_testkit import Collect

from tandem.core.errors import ConfigError
from tandem.runtime.config import compose_run
from tandem.runtime.session import Session

BASE = ["policy=scripted", "policy.bias=0.8", "robot.realtime=false", "robot.cameras=[]", "robot.task=reach-v3",
        "robot.max_episode_steps=150", "teleop=human"]


def test_evaluations_run_without_the_operator_on_unseen_scenes_and_feed_no_sink():
    sink = Collect()
    cfg = compose_run([*BASE, "session.episodes=4", "session.eval_every=2", "session.eval_episodes=2"])
    summary = Session(cfg, sinks=[sink]).run()
    assert len(summary.episodes) == 4 and [e["after_episodes"] for e in summary.evaluations] == [2, 4]
    for ev in summary.evaluations:
        assert ev["split"] == "unseen" and len(ev["episodes"]) == 2
        for e in ev["episodes"]:
            assert e["takeovers"] == 0 and e["intervention_ticks"] == 0  # nobody helps
            assert e["scene"]["split"] == "unseen"
    first, second = ([e["scene"]["positions"] for e in ev["episodes"]] for ev in summary.evaluations)
    assert first == second  # the same scenes every round: the curve compares like with like
    assert all(e["scene"]["split"] == "train" for e in summary.episodes)
    assert sum(e["takeovers"] for e in summary.episodes) >= 1  # the operator works in training episodes
    # the sinks (recorder, learner link, tick log) saw the training episodes only
    assert sink.ended == [e["episode"] for e in summary.episodes]
    head = summary.headline()
    assert head["autonomous"] == summary.evaluations[-1]["success_rate"]
    assert 0 < head["operator_share"] <= 0.5 and head["assisted"] == summary.success_rate


def test_evaluation_needs_train_scenes_for_training():
    cfg = compose_run([*BASE, "session.eval_every=1", "robot.scenes=unseen"])
    with pytest.raises(ConfigError, match="robot.scenes"):
        Session(cfg).build()
