"""Gamepad and leader-arm devices (fakes only at the joystick / motor-bus level) and the teleop configs."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.core.errors import ConfigError, DeviceMissingError
from tandem.runtime.config import compose_run
from tandem.teleop.gamepad import GamepadConfig, GamepadTeleop
from tandem.teleop.keyboard import KeyboardConfig
from tandem.teleop.leader_arm import LeaderArmConfig, LeaderArmTeleop
from tandem.teleop.scripted_operator import ScriptedOperatorConfig
from tandem.teleop.takeover import Mode, TakeoverOperator, make_operator


class FakeJoystick:
    """The lowest level of a pad: axes and buttons."""

    def __init__(self) -> None:
        self.axes = [0.0] * 6
        self.buttons = [0] * 11

    def get_numaxes(self) -> int:
        return len(self.axes)

    def get_numbuttons(self) -> int:
        return len(self.buttons)

    def get_axis(self, i: int) -> float:
        return self.axes[i]

    def get_button(self, i: int) -> int:
        return self.buttons[i]


def test_gamepad_hold_rb_to_intervene_sticks_and_edge_triggered_buttons():
    pad = FakeJoystick()
    dev = GamepadTeleop(GamepadConfig(speed=0.5, deadzone=0.1), joystick=pad)
    dev.connect()
    assert dev.get_events().intervene is False
    pad.buttons[5] = 1  # RB held
    pad.axes[0], pad.axes[1], pad.axes[4] = 1.0, -1.0, 0.05  # right, up (inverted), z inside the dead zone
    pad.buttons[3] = 1  # Y: success
    ev = dev.get_events()
    assert ev.intervene is True and ev.events == ("success",)
    assert dev.get_events().events == ()  # a held button fires once
    np.testing.assert_allclose(dev.get_action(), [0.5, 0.5, 0.0, 0.0])
    dev.sync(np.array([0, 0, 0, -1.0], np.float32))
    pad.buttons[0] = 1  # A toggles the gripper: open -> closed
    dev.get_events()
    assert dev.get_action()[3] == 1.0
    pad.buttons[7] = 1  # Start: stop
    assert "stop" in dev.get_events().events
    dev.disconnect()


def test_gamepad_drives_the_state_machine_hold_to_intervene():
    pad = FakeJoystick()
    dev = GamepadTeleop(GamepadConfig(ramp_ticks=0, fade_ticks=2), joystick=pad)
    op = TakeoverOperator(dev, dev.config, last_sent=lambda: np.zeros(4, np.float32), hold=lambda a: np.zeros(4))
    op.connect()
    op.reset()
    pad.buttons[5] = 1
    assert op.step({}, np.zeros(4), 0).takeover_start
    pad.buttons[5] = 0
    assert op.step({}, np.zeros(4), 1).blend < 1 and op.mode == Mode.HANDBACK


def test_missing_gamepad_is_reported():
    pytest.importorskip("pygame")
    dev = GamepadTeleop(GamepadConfig(index=7))
    with pytest.raises(DeviceMissingError, match="no gamepad"):
        dev.connect()
    dev.disconnect()


class FakeBus:
    """The lowest level of a leader arm: lerobot's motor bus."""

    def __init__(self, motors: dict) -> None:
        self.motors = motors
        self.is_connected = False
        self.is_calibrated = True
        self.positions = {m: float(i) for i, m in enumerate(motors)}
        self.unplugged = False

    def connect(self, handshake: bool = True) -> None:
        self.is_connected = True

    def disconnect(self, disable_torque: bool = True) -> None:
        self.is_connected = False

    def disable_torque(self, *args, **kwargs) -> None:
        pass

    def configure_motors(self, *args, **kwargs) -> None:
        pass

    def write(self, *args, **kwargs) -> None:
        pass

    def sync_read(self, what: str, *args, **kwargs) -> dict:
        if self.unplugged:
            raise ConnectionError("Failed to sync read 'Present_Position': [TxRxResult] There is no status packet!")
        return dict(self.positions)


def test_so101_leader_through_lerobot_with_a_fake_motor_bus(tmp_path):
    from lerobot.teleoperators.so_leader import SO101Leader

    cfg = LeaderArmConfig(device="so101_leader", port="/dev/null-leader", calibration_dir=str(tmp_path), events="none",
                          calibrate=False)
    from tandem.teleop.leader_arm import lerobot_config

    teleop = SO101Leader(lerobot_config(cfg))
    teleop.bus = FakeBus(teleop.bus.motors)
    dev = LeaderArmTeleop(cfg, teleop=teleop)
    dev.connect()
    try:
        np.testing.assert_allclose(dev.get_action(), [0, 1, 2, 3, 4, 5])
        assert dev.action_feature.names[0] == "shoulder_pan.pos"
        assert dev.get_events().events == ()
        teleop.bus.unplugged = True
        with pytest.raises(DeviceMissingError, match="read failed"):
            dev.get_action()
    finally:
        dev.disconnect()


def test_missing_leader_port_is_reported():
    dev = LeaderArmTeleop(LeaderArmConfig(port="/dev/no-such-leader", events="none"))
    with pytest.raises(DeviceMissingError, match="does not exist"):
        dev.connect()


def test_teleop_configs_compose_and_validate():
    assert compose_run([]).teleop.type == "none"
    cfg = compose_run(["teleop=keyboard", "teleop.speed=0.3"])
    assert isinstance(cfg.teleop, KeyboardConfig) and cfg.teleop.speed == 0.3
    assert isinstance(compose_run(["teleop=gamepad"]).teleop, GamepadConfig)
    leader = compose_run(["teleop=so101_leader", "teleop.device=koch_leader"]).teleop
    assert isinstance(leader, LeaderArmConfig) and leader.device == "koch_leader"
    assert isinstance(compose_run(["teleop=scripted"]).teleop, ScriptedOperatorConfig)
    with pytest.raises(ConfigError, match="teleop.device"):
        compose_run(["teleop=so101_leader", "teleop.device=so999_leader"])
    with pytest.raises(ConfigError, match="teleop.ramp_ticks"):
        compose_run(["teleop=scripted", "teleop.ramp_ticks=-1"])


def test_make_operator_rejects_a_device_for_another_robot():
    from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig

    robot = MetaWorldRobot(MetaWorldRobotConfig(cameras=[]))
    assert make_operator(None, robot, lambda: None) is None
    assert isinstance(make_operator(KeyboardConfig(), robot, lambda: None), TakeoverOperator)
    with pytest.raises(ValueError, match="pick a teleop device for this robot"):
        make_operator(LeaderArmConfig(events="none"), robot, lambda: None)
