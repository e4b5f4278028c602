"""Holds are the robot's own: a delta-controlled robot (MetaWorld's end-effector deltas) stops when the
policy starves, instead of repeating its last (moving) command."""

from __future__ import annotations

import numpy as np

from tandem.hardware.features import STATE_KEY
from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig
from tandem.policies.base import Chunk
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.loop import run_episode
from tandem.runtime.control.safety import SafetyConfig, SafetyFilter
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InferenceBackend


class OneChunkThenSilence(InferenceBackend):
    """Answers the first request with 5 ticks of +x motion, then never again (a dead policy worker)."""

    def __init__(self) -> None:
        self.replies = []
        self.answered = 0

    def submit(self, request_id, observation, task):
        if self.answered == 0:
            actions = np.tile(np.array([1.0, 0.0, 0.0, 0.5], np.float32), (5, 1))
            self.replies.append((request_id, Chunk(actions=actions)))
        self.answered += 1

    def poll(self, wait_s=0.0):
        out, self.replies = self.replies, []
        return out

    def close(self):
        pass


class RepeatLast(MetaWorldRobot):
    """What the filter held before: the last command, again and again."""

    def hold_action(self, last_sent):
        return np.zeros(4, np.float32) if last_sent is None else np.asarray(last_sent, np.float32).copy()


def starve(repeat_last: bool):
    """25 ticks: 5 planned ticks of +x, then 20 starved ones. Returns (result, per-tick hands and actions, final hand)."""
    robot = (RepeatLast if repeat_last else MetaWorldRobot)(MetaWorldRobotConfig(task="reach-v3", cameras=[], realtime=True, fps=100))
    safety = SafetyFilter(SafetyConfig(max_delta=2.0, watchdog_s=0.05), -np.ones(4, np.float32),
                          np.ones(4, np.float32), np.zeros(4, np.float32))
    controller = Controller(ChunkScheduler(OneChunkThenSilence(), SchedulerConfig()), 5, hold=safety.hold_action)
    hands = []

    class Hand:
        def start_episode(self, episode, task):
            pass

        def on_tick(self, record):
            hands.append((record.observation[STATE_KEY][:3].copy(), record.action.copy()))

        def end_episode(self, result):
            pass

    with robot:
        result = run_episode(robot, controller, safety, episode=0, hz=robot.fps, max_steps=25, seed=0, sinks=[Hand()])
        final = robot.get_observation()[STATE_KEY][:3]
    return result, hands, final


def test_starved_delta_robot_stops_instead_of_drifting():
    result, hands, final = starve(repeat_last=False)
    assert result.starved_ticks == 20
    moving = hands[4][0] - hands[0][0]
    assert moving[0] > 0.01  # the 5 planned ticks moved the hand along +x
    starved_actions = np.array([a for _, a in hands[5:]])
    np.testing.assert_array_equal(starved_actions[:, :3], 0.0)  # zero motion, not the last +x command
    np.testing.assert_array_equal(starved_actions[:, 3], 0.5)  # the gripper keeps its command
    assert result.safety["watchdog_trips"] == 1
    held = np.linalg.norm(final - hands[5][0])  # the mocap's lag settling, then still
    _, drifted_hands, drifted_final = starve(repeat_last=True)
    drifted = np.linalg.norm(drifted_final - drifted_hands[5][0])
    print(f"hand motion over 20 starved ticks: held {held * 100:.1f} cm, repeating the last command {drifted * 100:.1f} cm")
    assert held < 0.3 * drifted
