"""The reset phase between episodes on a real arm (lerobot's SO101Follower over the faked motor bus): the
arm holds with torque on while the operator resets the scene, until a confirmation or the timeout."""

from __future__ import annotations

import numpy as np
from test_lerobot_robot import FakeMotors, write_calibration_file
from test_lerobot_safety import Reach, parts

from tandem.hardware.features import ACTION_KEY, Feature
from tandem.hardware.lerobot_robot import LeRobotRobot, LeRobotRobotConfig
from tandem.runtime.config import RunConfig, SessionConfig
from tandem.runtime.control.safety import SafetyConfig
from tandem.runtime.recording.recorder import RecordConfig
from tandem.runtime.session import Session
from tandem.teleop.takeover import TakeoverOperator
from tandem.teleop.teleoperator import TakeoverSettings, Teleoperator, TeleopEvents


class Pedal(Teleoperator):
    """A foot pedal: presses ``event`` on the ``press_on``-th poll of every reset phase (polls with no control
    tick in between); never takes over."""

    name = "pedal"

    def __init__(self, event: str | None, press_on: int = 5) -> None:
        self.event, self.press_on, self.polls, self.resets = event, press_on, 0, 0

    @property
    def action_features(self):
        return {ACTION_KEY: Feature("float32", (6,))}

    @property
    def is_connected(self):
        return True

    def connect(self):
        pass

    def disconnect(self):
        pass

    def get_action(self):
        raise AssertionError("the pedal never takes over")

    def get_events(self):
        self.polls += 1
        if self.event and self.polls == self.press_on:
            return TeleopEvents(events=(self.event,))
        return TeleopEvents()

    def observe(self, observation, policy_action, tick):
        self.polls = 0  # a control tick: not the reset phase

    def reset(self):
        self.polls = 0
        self.resets += 1


def session_with(tmp_path, monkeypatch, device, timeout_s, episodes=3):
    motors = FakeMotors()
    motors.install(monkeypatch)
    port = tmp_path / "ttyACM0"
    port.touch()
    write_calibration_file(tmp_path)
    robot = LeRobotRobot(LeRobotRobotConfig(port=str(port), id="arm", calibration_dir=str(tmp_path), fps=50,
                                            max_episode_steps=5))
    cfg = RunConfig(robot=robot.config, session=SessionConfig(episodes=episodes, horizon=5, reset_timeout_s=timeout_s),
                    safety=SafetyConfig(max_delta=1.0), record=RecordConfig(enabled=False))
    session = Session(cfg)
    session.robot, session.policy = robot, Reach()
    session.safety, session.controller, session.backend = parts(robot, session.policy, cfg.safety)
    session.operator = TakeoverOperator(device, TakeoverSettings(), last_sent=lambda: session.safety.last,
                                        hold=robot.hold_action)
    session.controller.operator = session.operator
    return session, motors


def test_the_operator_confirms_each_reset(tmp_path, monkeypatch):
    session, motors = session_with(tmp_path, monkeypatch, Pedal("takeover"), timeout_s=5.0)
    summary = session.run()
    assert [e["outcome"] for e in summary.episodes] == ["timeout"] * 3
    assert [(r["before_episode"], r["how"]) for r in summary.resets] == [(1, "confirmed"), (2, "confirmed")]
    assert all(r["wait_s"] < 1.0 for r in summary.resets)  # the 5th poll, 20 ms apart
    assert all(e["intervention_ticks"] == 0 for e in summary.episodes)  # the confirming press took nothing over


def test_the_reset_times_out_and_a_stop_ends_the_session(tmp_path, monkeypatch):
    session, _ = session_with(tmp_path, monkeypatch, Pedal(None), timeout_s=0.2, episodes=2)
    summary = session.run()
    assert len(summary.episodes) == 2 and [r["how"] for r in summary.resets] == ["timeout"]
    assert 0.2 <= summary.resets[0]["wait_s"] < 1.0


def test_a_stop_during_the_reset_ends_the_session(tmp_path, monkeypatch):
    session, motors = session_with(tmp_path, monkeypatch, Pedal("stop"), timeout_s=5.0)
    summary = session.run()
    assert len(summary.episodes) == 1 and [r["how"] for r in summary.resets] == ["stop"]
    assert not motors.is_open


def test_simulated_robots_skip_the_reset_phase():
    from tandem.runtime.config import compose_run

    cfg = compose_run(["policy=scripted", "robot.realtime=false", "robot.cameras=[]", "robot.task=reach-v3",
                       "robot.max_episode_steps=5", "session.episodes=2", "teleop=scripted", "record.enabled=false"])
    summary = Session(cfg).run()
    assert len(summary.episodes) == 2 and summary.resets == []
    assert np.isfinite(summary.wall_s)
