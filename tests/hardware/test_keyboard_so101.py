"""Keyboard teleop on an SO-101 configuration: joint by joint (no end-effector kinematics here), through
the takeover state machine, the safety filter and lerobot's SO101Follower over the faked motor bus."""

from __future__ import annotations

import os
import pty
import time

import numpy as np
import pytest
from test_lerobot_robot import DEG_PER_TICK, FakeMotors, write_calibration_file

from tandem.hardware.lerobot_robot import LeRobotRobot, LeRobotRobotConfig
from tandem.policies.base import BasePolicy, Chunk
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.loop import run_episode
from tandem.runtime.control.safety import SafetyConfig, SafetyFilter
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend
from tandem.teleop.keyboard import KeyboardConfig
from tandem.teleop.takeover import make_operator


class Still(BasePolicy):
    """Holds the arm where it is."""

    name = "still"
    chunk_length, action_dim = 5, 6

    def infer(self, observation, task):
        return Chunk(actions=np.repeat(observation["observation.state"][None], 5, axis=0))


class Typist:
    """A sink that types keys into the terminal at given ticks."""

    def __init__(self, master: int, keys: dict[int, bytes]) -> None:
        self.master, self.keys = master, keys

    def start_episode(self, episode, task):
        pass

    def on_tick(self, record):
        if record.tick in self.keys:
            os.write(self.master, self.keys[record.tick])

    def end_episode(self, result):
        pass


def test_keyboard_drives_an_so101_joint_by_joint(tmp_path, monkeypatch):
    motors = FakeMotors()
    motors.install(monkeypatch)
    port = tmp_path / "ttyACM0"
    port.touch()
    write_calibration_file(tmp_path)
    robot = LeRobotRobot(LeRobotRobotConfig(port=str(port), id="arm", calibration_dir=str(tmp_path), fps=50))
    master, slave = pty.openpty()
    try:
        operator = make_operator(KeyboardConfig(tty=os.ttyname(slave), joint_speed=1.0, key_hold_s=0.3,
                                                ramp_ticks=0), robot, last_sent=lambda: safety.last)
        assert operator.device.joint_mode and "2 shoulder_lift" in operator.device.help_text()
        low, high = robot.action_feature.bounds()
        safety = SafetyFilter(SafetyConfig(max_delta=2.0), low, high, np.zeros(6, np.float32))
        controller = Controller(ChunkScheduler(InlineBackend(Still()), SchedulerConfig()), 5,
                                hold=safety.hold_action, operator=operator)
        # tick 2: take over and select shoulder_lift; ticks 3..: hold "w" (key repeats) to raise it
        keys = {2: b" 2", **{t: b"w" for t in range(3, 20, 4)}, 30: b"y"}
        with robot:
            operator.connect()
            try:
                time.sleep(0.05)
                result = run_episode(robot, controller, safety, episode=0, hz=robot.fps, max_steps=60,
                                     sinks=[Typist(master, keys)])
            finally:
                operator.disconnect()
            state = robot.get_observation()["observation.state"]
    finally:
        os.close(master)
        os.close(slave)
    assert result.outcome == "success" and result.takeovers == 1  # "y" marked it, from the keyboard
    assert result.intervention_ticks > 10
    assert state[1] > 8.0  # shoulder_lift rose about 1 degree per tick while "w" was held
    np.testing.assert_allclose(np.delete(state, 1), [0, 0, 0, 0, 50], atol=DEG_PER_TICK)  # nothing else moved


def test_keyboard_on_metaworld_stays_end_effector():
    from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig

    robot = MetaWorldRobot(MetaWorldRobotConfig(cameras=[]))
    operator = make_operator(KeyboardConfig(), robot, last_sent=lambda: None)
    assert not operator.device.joint_mode
    assert operator.device.action_feature.names == ("dx", "dy", "dz", "gripper")


@pytest.mark.parametrize("robot_type", ["koch_follower"])
def test_keyboard_accepts_other_arms(tmp_path, robot_type):
    robot = LeRobotRobot(LeRobotRobotConfig(robot_type=robot_type, id="k", calibration_dir=str(tmp_path)))
    operator = make_operator(KeyboardConfig(), robot, last_sent=lambda: None)  # used to raise: 4-D vs 6-D
    assert operator.device.action_feature.shape == (6,)
