"""Safety on a real arm's code path: lerobot's SO101Follower and FeetechMotorsBus, the serial link faked.

Only the bus's register transfers are fake (``test_lerobot_robot.FakeMotors``); lerobot's normalisation,
torque handling and errors, tandem's robot adapter, safety filter, control loop, session and recorder
are the real ones. What is asserted is what reaches the motors' registers.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_lerobot_robot import DEG_PER_TICK, FakeMotors, write_calibration_file

from tandem.hardware.features import STATE_KEY
from tandem.hardware.lerobot_robot import LeRobotRobot, LeRobotRobotConfig
from tandem.policies.base import BasePolicy, Chunk
from tandem.runtime.config import RunConfig, SessionConfig
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.loop import run_episode
from tandem.runtime.control.safety import SafetyConfig, SafetyFilter
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend, ThreadBackend
from tandem.runtime.recording.recorder import RecordConfig
from tandem.runtime.session import Session, SessionAborted

SHOULDER = 2  # motor id of shoulder_lift


class Reach(BasePolicy):
    """Chunks of 5 ticks toward the shoulder at -40 deg; with ``stall_after`` chunks, later calls block."""

    name = "reach"
    chunk_length, action_dim, feature_dim = 5, 6, 0

    def __init__(self, stall_after: int | None = None) -> None:
        self.calls = 0
        self.stall_after = stall_after
        self.release = threading.Event()

    def infer(self, observation, task):
        self.calls += 1
        if self.stall_after is not None and self.calls > self.stall_after:
            self.release.wait(10)  # a stalled policy worker
        target = np.array([0, -40, 0, 0, 0, 50], np.float32)
        return Chunk(actions=np.repeat(target[None], self.chunk_length, axis=0))


@pytest.fixture
def motors(monkeypatch):
    fake = FakeMotors()
    fake.install(monkeypatch)
    return fake


def make_robot(tmp_path, **kwargs) -> LeRobotRobot:
    port = tmp_path / "ttyACM0"
    port.touch()
    write_calibration_file(tmp_path)
    cfg = LeRobotRobotConfig(port=str(port), id="arm", calibration_dir=str(tmp_path), **kwargs)
    return LeRobotRobot(cfg)


def goals(motors: FakeMotors, motor_id: int) -> list[float]:
    """Goal positions written to one motor, in degrees around the calibrated middle."""
    return [(v - 2048) * DEG_PER_TICK for name, i, v in motors.writes if name == "Goal_Position" and i == motor_id]


def parts(robot, policy, safety_cfg, backend=None):
    low, high = robot.action_feature.bounds()
    safety = SafetyFilter(safety_cfg, low, high, np.zeros(6, np.float32))
    backend = backend or InlineBackend(policy)
    controller = Controller(ChunkScheduler(backend, SchedulerConfig()), 5, hold=safety.hold_action)
    return safety, controller, backend


def test_first_tick_is_rate_limited_from_the_measured_pose(tmp_path, motors):
    robot = make_robot(tmp_path, fps=100)
    safety, controller, _ = parts(robot, Reach(), SafetyConfig(max_delta=2.0))
    with robot:
        start = len(goals(motors, SHOULDER))
        result = run_episode(robot, controller, safety, episode=0, hz=robot.fps, max_steps=5)
    sent = goals(motors, SHOULDER)[start:]
    # the arm stood at 0 deg; the policy asks for -40 deg: the first goal on the bus is -2 deg, not -40
    assert sent[0] == pytest.approx(-2.0, abs=DEG_PER_TICK)
    assert np.all(np.abs(np.diff([0.0, *sent])) <= 2.0 + DEG_PER_TICK)
    assert sent[-1] == pytest.approx(-10.0, abs=DEG_PER_TICK)
    assert result.safety["rate_limited"] == 5


def test_first_tick_is_limited_from_where_the_arm_is_not_from_the_last_episode(tmp_path, motors):
    robot = make_robot(tmp_path, fps=100)
    safety, controller, _ = parts(robot, Reach(), SafetyConfig(max_delta=2.0))
    with robot:
        run_episode(robot, controller, safety, episode=0, hz=robot.fps, max_steps=5)  # ends at -10 deg
        robot.send_action(np.array([0, 20, 0, 0, 0, 50], np.float32))  # someone moved the arm to +20 deg
        start = len(goals(motors, SHOULDER))
        run_episode(robot, controller, safety, episode=1, hz=robot.fps, max_steps=1)
    assert goals(motors, SHOULDER)[start] == pytest.approx(18.0, abs=DEG_PER_TICK)


def test_watchdog_holds_the_arm_while_the_policy_stalls(tmp_path, motors):
    robot = make_robot(tmp_path, fps=50)
    policy = Reach(stall_after=1)  # the first chunk arrives, then the worker stalls
    backend = ThreadBackend(policy)
    safety, controller, _ = parts(robot, policy, SafetyConfig(max_delta=1.0, watchdog_s=0.2), backend)
    try:
        with robot:
            start = len(goals(motors, SHOULDER))
            result = run_episode(robot, controller, safety, episode=0, hz=robot.fps, max_steps=30)
            held = robot.get_observation()[STATE_KEY]
    finally:
        policy.release.set()
        backend.close()
    sent = goals(motors, SHOULDER)[start:]
    assert sent[4] == pytest.approx(-5.0, abs=DEG_PER_TICK)  # 5 planned ticks at 1 deg per tick
    assert result.starved_ticks == 25
    # starved ticks hold where the arm is: the goal never moves again (no drift, no jump)
    np.testing.assert_allclose(sent[5:], sent[4], atol=DEG_PER_TICK)
    assert held[1] == pytest.approx(-5.0, abs=DEG_PER_TICK)
    assert result.safety["watchdog_trips"] == 1 and result.safety["watchdog_holds"] >= 10


def test_an_action_on_a_stalled_read_is_not_sent(tmp_path, motors):
    robot = make_robot(tmp_path, fps=50)
    safety, controller, _ = parts(robot, Reach(), SafetyConfig(max_delta=1.0, watchdog_s=0.1))
    with robot:
        motors.read_delay_s = 0.15  # every bus read stalls longer than the watchdog
        start = len(goals(motors, SHOULDER))
        result = run_episode(robot, controller, safety, episode=0, hz=robot.fps, max_steps=4)
    np.testing.assert_allclose(goals(motors, SHOULDER)[start:], 0.0, atol=DEG_PER_TICK)  # held, not moved
    assert result.safety["stale_observation"] == 4


def test_transient_read_errors_are_retried_within_the_tick(tmp_path, motors):
    robot = make_robot(tmp_path, fps=50)
    safety, controller, _ = parts(robot, Reach(), SafetyConfig(max_delta=1.0))
    with robot:
        run_episode(robot, controller, safety, episode=0, hz=robot.fps, max_steps=3)
        motors.fail_reads = 2  # two corrupt status packets in a row
        result = run_episode(robot, controller, safety, episode=1, hz=robot.fps, max_steps=10)
    assert result.outcome == "timeout" and result.steps == 10
    assert result.faults == {"read_retries": 2, "read_recovered": 1}
    motors.fail_reads = 5  # more than robot.read_retries=3: the read fails
    robot = make_robot(tmp_path, fps=50)
    with robot, pytest.raises(ConnectionError, match="status packet"):
        robot.get_observation()
    assert robot.fault_stats()["read_failures"] == 1


def test_a_dead_bus_mid_episode_is_a_controlled_stop_with_torque_held_and_the_dataset_intact(tmp_path, motors):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    robot = make_robot(tmp_path, fps=50)
    root = tmp_path / "dataset"
    hold_s = 0.6
    cfg = RunConfig(robot=robot.config, session=SessionConfig(episodes=2, horizon=5),
                    safety=SafetyConfig(max_delta=1.0, stop_hold_s=hold_s),
                    record=RecordConfig(enabled=True, root=str(root)))
    session = Session(cfg)
    session.robot, session.policy = robot, Reach()
    session.safety, session.controller, session.backend = parts(robot, session.policy, cfg.safety)
    motors.dead_after_reads = 1 + 12  # connect's first read, then 12 good ticks (tick 0 reads twice)
    with pytest.raises(SessionAborted, match="ConnectionError") as err:
        session.run()
    summary = err.value.summary
    assert summary.faults["controlled_stops"] == 1 and summary.faults["controlled_stop"] == "held"
    assert summary.faults["read_failures"] == 1 and summary.faults["read_retries"] >= 1
    # after the last good read: the hold goal (the last safe goal), then torque stays on for stop_hold_s
    torque_off = [t for (name, _, v), t in zip(motors.writes, motors.write_times, strict=True)
                  if name == "Torque_Enable" and v == 0]
    hold_goal = [(t, (v - 2048) * DEG_PER_TICK) for (name, i, v), t in zip(motors.writes, motors.write_times,
                                                                           strict=True)
                 if name == "Goal_Position" and i == SHOULDER][-1]
    assert hold_goal[1] == pytest.approx(-11.0, abs=DEG_PER_TICK)  # where the 11 sent ticks had taken it
    off_after = [t for t in torque_off if t >= hold_goal[0]]  # (connect turns torque off and on while configuring)
    assert len(off_after) == 6, "disconnect turns every motor's torque off, once the hold is over"
    assert min(off_after) - hold_goal[0] >= hold_s - 0.05, "torque went off before the hold time"
    assert not robot.is_connected and not motors.is_open
    # the recording of the interrupted episode is a loadable dataset with every tick that ran
    assert summary.recording["episodes_committed"] == 1 and summary.recording["errors"] == []
    ds = LeRobotDataset("local/dataset", root=root)
    assert ds.num_episodes == 1 and len(ds) == summary.recording["frames_committed"] == 11
