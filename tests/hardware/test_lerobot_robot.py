"""LeRobotRobot over lerobot's real SO101Follower and FeetechMotorsBus, with the serial link faked.

Only the lowest level is replaced: the port handler's open/close/clear and the bus's register
transfers (``_read``, ``_write``, ``_sync_read``, ``_sync_write``) talk to :class:`FakeMotors`, an
in-memory register table per motor id. Everything above (lerobot's calibration check and write,
motor configuration, torque handling, normalisation to degrees / 0..100, max_relative_target
clipping, torque-off on disconnect) is lerobot's own code.
"""

from __future__ import annotations

import builtins
import json
import time

import numpy as np
import pytest

from tandem.core.errors import ConfigError, DeviceMissingError
from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY
from tandem.hardware.lerobot_robot import CalibrationError, LeRobotRobot, LeRobotRobotConfig

MOTORS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
JOINTS = tuple(f"{m}.pos" for m in MOTORS)
RANGE_MIN, RANGE_MAX = 1048, 3048  # calibrated raw range: middle 2048 -> 0 deg, gripper 50 %
DEG_PER_TICK = 360 / 4095


class FakeMotors:
    """Six STS3215 servos as register tables; a Goal_Position write moves Present_Position at once."""

    def __init__(self) -> None:
        from lerobot.motors.feetech.tables import STS_SMS_SERIES_CONTROL_TABLE as table

        self.addr = {name: addr for name, (addr, _len) in table.items()}
        self.regs: dict[int, dict[int, int]] = {i: {self.addr["Present_Position"]: 2048} for i in range(1, 7)}
        self.is_open = False
        self.opens = 0
        self.closes = 0
        self.writes: list[tuple[str, int, int]] = []  # (register name, motor id, raw value)
        self.fail_sync_write = False
        self.fail_torque_off = False
        self.fail_reads = 0  # the next N sync reads get no status packet (a transient bus error)
        self.dead_after_reads: int | None = None  # after this many more sync reads, every read fails
        self.read_delay_s = 0.0  # each sync read takes this long (a stalled bus)
        self.write_times: list[float] = []  # time.monotonic() of each entry in ``writes``
        self._names = {addr: name for name, addr in self.addr.items()}

    def reg(self, motor_id: int, name: str) -> int:
        return self.regs[motor_id].get(self.addr[name], 0)

    def _store(self, motor_id: int, addr: int, value: int) -> None:
        name = self._names.get(addr, str(addr))
        if name == "Torque_Enable" and value == 0 and self.fail_torque_off:
            raise ConnectionError("fake bus: no status packet")
        self.writes.append((name, motor_id, value))
        self.write_times.append(time.monotonic())
        self.regs[motor_id][addr] = value
        if name == "Goal_Position":
            self.regs[motor_id][self.addr["Present_Position"]] = value

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import scservo_sdk as scs
        from lerobot.motors.feetech import FeetechMotorsBus

        fake = self

        def open_port(port_handler):
            port_handler.is_open = True
            fake.is_open = True
            fake.opens += 1
            return True

        def close_port(port_handler):
            port_handler.is_open = False
            fake.is_open = False
            fake.closes += 1

        def read(bus, address, length, motor_id, *, num_retry=0, raise_on_error=True, err_msg=""):
            return fake.regs[motor_id].get(address, 0), bus._comm_success, 0

        def write(bus, addr, length, motor_id, value, *, num_retry=0, raise_on_error=True, err_msg=""):
            fake._store(motor_id, addr, value)
            return bus._comm_success, 0

        def sync_read(bus, addr, length, motor_ids, *, num_retry=0, raise_on_error=True, err_msg=""):
            if fake.read_delay_s:
                time.sleep(fake.read_delay_s)
            if fake.dead_after_reads is not None:
                if fake.dead_after_reads <= 0:
                    raise ConnectionError(f"{err_msg} fake bus: [TxRxResult] There is no status packet!")
                fake.dead_after_reads -= 1
            if fake.fail_reads > 0:
                fake.fail_reads -= 1
                raise ConnectionError(f"{err_msg} fake bus: [TxRxResult] Incorrect status packet!")
            return {i: fake.regs[i].get(addr, 0) for i in motor_ids}, bus._comm_success

        def sync_write(bus, addr, length, ids_values, num_retry=0, raise_on_error=True, err_msg=""):
            if fake.fail_sync_write:
                raise ConnectionError(f"{err_msg} fake bus: port write failed")
            for motor_id, value in ids_values.items():
                fake._store(motor_id, addr, value)
            return bus._comm_success

        monkeypatch.setattr(scs.PortHandler, "openPort", open_port)
        monkeypatch.setattr(scs.PortHandler, "closePort", close_port)
        monkeypatch.setattr(scs.PortHandler, "clearPort", lambda port_handler: None)
        monkeypatch.setattr(FeetechMotorsBus, "_handshake", lambda bus: None)
        monkeypatch.setattr(FeetechMotorsBus, "_read", read)
        monkeypatch.setattr(FeetechMotorsBus, "_write", write)
        monkeypatch.setattr(FeetechMotorsBus, "_sync_read", sync_read)
        monkeypatch.setattr(FeetechMotorsBus, "_sync_write", sync_write)


def write_calibration_file(folder, robot_id: str = "arm") -> None:
    """What ``lerobot-calibrate`` leaves behind."""
    cal = {
        m: {"id": i + 1, "drive_mode": 0, "homing_offset": 0, "range_min": RANGE_MIN, "range_max": RANGE_MAX}
        for i, m in enumerate(MOTORS)
    }
    (folder / f"{robot_id}.json").write_text(json.dumps(cal))


@pytest.fixture
def motors(monkeypatch, tmp_path):
    fake = FakeMotors()
    fake.install(monkeypatch)

    def no_prompt(*args):
        raise AssertionError(f"the adapter must not prompt: {args}")

    monkeypatch.setattr(builtins, "input", no_prompt)
    return fake


@pytest.fixture
def port(tmp_path):
    path = tmp_path / "ttyACM0"
    path.touch()  # the device node exists; the fake link answers for it
    return str(path)


def make_robot(tmp_path, port: str, **kwargs) -> LeRobotRobot:
    write_calibration_file(tmp_path)
    cfg = LeRobotRobotConfig(
        robot_type="so101_follower", port=port, id="arm", calibration_dir=str(tmp_path), **kwargs
    )
    return LeRobotRobot(cfg)


def test_schema_before_connect(tmp_path, port):
    robot = make_robot(
        tmp_path,
        port,
        cameras={"wrist": {"type": "opencv", "index_or_path": 0, "width": 64, "height": 48, "fps": 30}},
    )
    feats = robot.observation_features
    assert list(feats) == [STATE_KEY, IMAGE_PREFIX + "wrist"]
    assert feats[STATE_KEY].shape == (6,) and feats[STATE_KEY].names == JOINTS
    assert feats[IMAGE_PREFIX + "wrist"].shape == (48, 64, 3) and feats[IMAGE_PREFIX + "wrist"].is_image
    act = robot.action_feature
    assert act.names == JOINTS and act.shape == (6,)
    low, high = act.bounds()
    half = (RANGE_MAX - RANGE_MIN) / 2 * DEG_PER_TICK  # degrees either side of the calibrated middle
    np.testing.assert_allclose(low[:5], -half, rtol=1e-5)
    np.testing.assert_allclose(high[:5], half, rtol=1e-5)
    assert (low[5], high[5]) == (0.0, 100.0)  # gripper: 0..100 % of its range
    assert not robot.is_connected
    robot.disconnect()  # safe before connect


def test_connect_observe_act_disconnect(tmp_path, port, motors):
    robot = make_robot(tmp_path, port)
    robot.connect()
    try:
        assert robot.is_connected and motors.is_open
        # the motors did not match the calibration file: it was written to them without a prompt
        assert all(motors.reg(i, "Min_Position_Limit") == RANGE_MIN for i in range(1, 7))
        assert all(motors.reg(i, "Max_Position_Limit") == RANGE_MAX for i in range(1, 7))
        assert all(motors.reg(i, "Torque_Enable") == 1 for i in range(1, 7))  # configured, torque back on
        robot.reset()
        obs = robot.get_observation()
        assert obs[STATE_KEY].dtype == np.float32
        np.testing.assert_allclose(obs[STATE_KEY], [0, 0, 0, 0, 0, 50], atol=1e-4)
        np.testing.assert_allclose(robot.hold_action(None), obs[STATE_KEY])

        action = np.array([10.0, -20.0, 30.0, 5.0, -45.0, 40.0], np.float32)
        sent = robot.send_action(action)
        assert sent.dtype == np.float32
        np.testing.assert_array_equal(sent, action)  # no clipping configured
        # the raw goal lerobot wrote for motor 1: degrees -> ticks around the middle
        assert motors.reg(1, "Goal_Position") == int(10.0 / DEG_PER_TICK + 2048)
        after = robot.get_observation()[STATE_KEY]
        np.testing.assert_allclose(after, action, atol=DEG_PER_TICK + 1e-4)  # one encoder tick
        np.testing.assert_array_equal(robot.hold_action(sent), sent)  # hold = the last goal, not a re-read
        np.testing.assert_allclose(robot.hold_action(None), after)  # before any goal: where the arm is
    finally:
        robot.disconnect()
    assert not robot.is_connected and not motors.is_open
    torque_off = [w for w in motors.writes if w[0] == "Torque_Enable" and w[2] == 0]
    assert {w[1] for w in torque_off[-6:]} == set(range(1, 7))  # torque disabled on disconnect
    robot.disconnect()  # twice is fine


def test_max_relative_target_clipping_is_returned(tmp_path, port, motors):
    robot = make_robot(tmp_path, port, max_relative_target=5)  # int in YAML: cast for lerobot
    with robot:
        robot.reset()
        sent = robot.send_action(np.array([20.0, -20.0, 3.0, 0.0, 0.0, 50.0], np.float32))
        np.testing.assert_allclose(sent, [5.0, -5.0, 3.0, 0.0, 0.0, 50.0], atol=1e-5)
        np.testing.assert_allclose(robot.get_observation()[STATE_KEY], sent, atol=DEG_PER_TICK + 1e-4)
    assert not motors.is_open


def test_bus_error_still_disconnects(tmp_path, port, motors):
    robot = make_robot(tmp_path, port)
    with pytest.raises(ConnectionError, match="port write failed"):
        with robot:
            motors.fail_sync_write = True
            robot.send_action(np.zeros(6, np.float32))
    assert not robot.is_connected and not motors.is_open and motors.closes == 1
    assert [w[1] for w in motors.writes if w[0] == "Torque_Enable" and w[2] == 0][-6:] == [1, 2, 3, 4, 5, 6]


def test_torque_off_failure_still_closes_port(tmp_path, port, motors):
    robot = make_robot(tmp_path, port)
    robot.connect()
    motors.fail_torque_off = True
    with pytest.raises(ConnectionError, match="no status packet"):
        robot.disconnect()
    assert not motors.is_open and not robot.is_connected
    robot.disconnect()


def test_home_pose_reset(tmp_path, port, motors):
    home = [0.0, -30.0, 30.0, 10.0, 0.0, 20.0]
    robot = make_robot(tmp_path, port, home_pose=home, reset_s=0.1, fps=50)
    with robot:
        robot.reset()
        np.testing.assert_allclose(robot.get_observation()[STATE_KEY], home, atol=DEG_PER_TICK + 1e-4)
        goals = [w for w in motors.writes if w[0] == "Goal_Position" and w[1] == 2]
        assert len(goals) == 5  # 0.1 s at 50 Hz, interpolated


def test_missing_port(tmp_path):
    missing = str(tmp_path / "ttyACM9")
    robot = make_robot(tmp_path, missing)
    with pytest.raises(DeviceMissingError) as err:
        robot.connect()
    assert missing in str(err.value) and "lerobot-find-port" in str(err.value)
    assert not robot.is_connected
    robot.disconnect()


def test_port_that_is_not_a_serial_device(tmp_path, port):
    # the path exists but is a plain file: lerobot's real bus fails to open it
    robot = make_robot(tmp_path, port)
    with pytest.raises(DeviceMissingError, match="lerobot-find-port"):
        robot.connect()
    robot.disconnect()


def test_missing_calibration_file_is_an_error_not_a_prompt(tmp_path, port, motors):
    cfg = LeRobotRobotConfig(port=port, id="uncalibrated", calibration_dir=str(tmp_path))
    robot = LeRobotRobot(cfg)
    with pytest.raises(CalibrationError, match="lerobot-calibrate --robot.type=so101_follower"):
        robot.connect()
    assert not motors.is_open and not robot.is_connected


def test_config_validation():
    with pytest.raises(ConfigError, match="robot.max_relative_target"):
        LeRobotRobotConfig(max_relative_target=-1)
    with pytest.raises(ConfigError, match=r"robot.cameras.front"):
        LeRobotRobotConfig(cameras={"front": {"type": "opencv", "index_or_path": 0}})
    with pytest.raises(ConfigError, match="robot.options.port"):
        LeRobotRobotConfig(options={"port": "/dev/ttyUSB0"})
    with pytest.raises(ConfigError, match="so101_follower"):
        _ = LeRobotRobot(LeRobotRobotConfig(robot_type="so101_folower")).action_feature


def test_in_the_control_loop(tmp_path, port, motors):
    from tandem.policies.base import BasePolicy, Chunk
    from tandem.runtime.control.controller import Controller
    from tandem.runtime.control.loop import run_episode
    from tandem.runtime.control.safety import SafetyConfig, SafetyFilter
    from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
    from tandem.runtime.inference.backends import InlineBackend

    class Raise(BasePolicy):
        """Raises the shoulder toward -40 deg, in chunks of 5."""

        chunk_length, action_dim = 5, 6

        def infer(self, observation, task):
            target = observation[STATE_KEY] + np.array([0, -10, 0, 0, 0, 0], np.float32)
            return Chunk(actions=np.repeat(target[None], self.chunk_length, axis=0))

    robot = make_robot(tmp_path, port, fps=100, max_relative_target=4.0)
    low, high = robot.action_feature.bounds()
    safety = SafetyFilter(SafetyConfig(max_delta=100.0), low, high, np.zeros(6, np.float32))
    controller = Controller(
        ChunkScheduler(InlineBackend(Raise()), SchedulerConfig()), 5, hold=safety.hold_action
    )
    with robot:
        result = run_episode(robot, controller, safety, episode=0, hz=robot.fps, max_steps=10, seed=None)
        state = robot.get_observation()[STATE_KEY]
    assert result.steps == 10 and result.outcome == "timeout"
    assert state[1] < -20  # the shoulder moved, 4 deg per tick at most (lerobot's clipping)
    assert state[1] >= -40 - DEG_PER_TICK
    assert not motors.is_open


def test_koch_schema_is_percent_of_range(tmp_path):
    cfg = LeRobotRobotConfig(robot_type="koch_follower", id="koch", calibration_dir=str(tmp_path))
    robot = LeRobotRobot(cfg)
    assert robot.observation_features[STATE_KEY].names == JOINTS
    low, high = robot.action_feature.bounds()
    np.testing.assert_array_equal(low, [-100] * 5 + [0])
    np.testing.assert_array_equal(high, [100] * 6)
