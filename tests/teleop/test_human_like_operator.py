"""The human-like operator: it never reads the policy's proposal, reacts late, takes over when the robot
stalls, and rescues a stalled robot in real MuJoCo sessions."""

from __future__ import annotations

import numpy as np
import pytest
from sinks_testkit import Collect

from tandem.core.errors import ConfigError
from tandem.hardware.metaworld_robot import TASK_INSTRUCTIONS, MetaWorldRobot, MetaWorldRobotConfig
from tandem.runtime.config import compose_run
from tandem.runtime.session import Session
from tandem.teleop.human_like import HumanLikeOperator, HumanLikeOperatorConfig
from tandem.teleop.teleoperator import DeviceContext


class Unreadable:
    """A policy proposal that fails the test if anything looks at it."""

    def __getattribute__(self, name):
        raise AssertionError(f"the operator read the policy's proposal ({name})")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the operator read the policy's proposal (as an array)")


def drive(operator, robot, ticks, policy_action):
    """Run the robot with a policy that does nothing unless the operator drives; the operator's decisions."""
    decisions = []
    robot.reset(5)
    operator.reset()
    for tick in range(ticks):
        obs = robot.get_observation()
        operator.observe(obs, policy_action(tick), tick)
        intervene = bool(operator.get_events().intervene)
        action = operator.get_action() if intervene else np.zeros(4, np.float32)
        decisions.append((intervene, action.copy()))
        robot.send_action(action)
    return decisions


@pytest.fixture(scope="module")
def robot():
    r = MetaWorldRobot(MetaWorldRobotConfig(task="reach-v3", cameras=[], realtime=False, scenes="train"))
    r.connect()
    yield r
    r.disconnect()


def make(**kw):
    ctx = DeviceContext(instruction=lambda: TASK_INSTRUCTIONS["reach-v3"], fps=50.0)
    return HumanLikeOperator(HumanLikeOperatorConfig(noise_std=0.0, **kw), ctx)


def test_it_never_reads_the_policys_proposal_and_decides_the_same_whatever_it_is(robot):
    poisoned = drive(make(), robot, 200, lambda t: Unreadable())
    other = drive(make(), robot, 200, lambda t: np.full(4, (-1.0) ** t, np.float32))
    assert any(i for i, _ in poisoned)  # it did take over a stalled robot
    assert [i for i, _ in poisoned] == [i for i, _ in other]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(poisoned, other, strict=True))


def test_it_reacts_after_its_delay_and_only_once_the_robot_stalls(robot):
    op = make(reaction_s=0.3, grace_s=0.0, stall_s=1.0)
    first = next(t for t, (i, _) in enumerate(drive(op, robot, 200, lambda t: None)) if i)
    # it first sees tick 0 at tick 15 (300 ms at 50 Hz), then needs 1 s (50 ticks) without progress
    assert first == 15 + 50
    assert op.last_reason == "stalled"
    late = make(reaction_s=0.6, grace_s=0.0, stall_s=1.0)
    assert next(t for t, (i, _) in enumerate(drive(late, robot, 200, lambda t: None)) if i) == 30 + 50


def test_it_holds_for_a_human_span_and_respects_its_budget(robot):
    op = make(grace_s=0.0, stall_s=0.5, min_hold_s=1.0, max_hold_s=1.2, recover_m=10.0, max_takeovers=2,
              cooldown_s=0.2, max_share=1.0)
    flags = [i for i, _ in drive(op, robot, 400, lambda t: None)]
    spans, run = [], 0
    for f in [*flags, False]:
        if f:
            run += 1
        elif run:
            spans.append(run)
            run = 0
    assert len(spans) == 2 == op.episode_takeovers  # the budget
    assert all(span == 60 for span in spans)  # max_hold_s at 50 Hz (recover_m unreachable)


def test_a_session_with_the_human_like_operator_rescues_a_policy_that_drifts_away():
    sink = Collect()
    cfg = compose_run(["policy=scripted", "policy.bias=0.8", "robot.realtime=false", "robot.cameras=[]",
                       "robot.task=reach-v3", "session.episodes=2", "robot.max_episode_steps=300", "teleop=human"])
    summary = Session(cfg, sinks=[sink]).run()
    assert all(e["takeovers"] >= 1 for e in summary.episodes)
    assert all(e["success"] for e in summary.episodes)
    share = sum(e["intervention_ticks"] for e in summary.episodes) / sum(e["steps"] for e in summary.episodes)
    assert 0 < share <= 0.5 + 1e-9  # max_share


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="teleop.skill"):
        HumanLikeOperatorConfig(skill=0.0)
    with pytest.raises(ConfigError, match="teleop.min_hold_s"):
        HumanLikeOperatorConfig(min_hold_s=5.0, max_hold_s=3.0)
