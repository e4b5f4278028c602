"""lerobot's leader arms (SO-100, SO-101, Koch) as teleoperators, through lerobot's own classes.

The leader's joint positions (lerobot's ``get_action()`` dict, ``<motor>.pos`` in lerobot's units)
become a float32[6] action in the follower's joint order. A leader arm has no buttons, so the
takeover toggle and the episode events come from the terminal keyboard (``events: keyboard``):
space takes over and hands back, y/n mark success/failure, e re-records, q stops. On takeover the
takeover state machine ramps from the follower's last command to the leader's pose, so the
follower never jumps to where the leader happens to be.

lerobot is imported on ``connect``. A missing serial port raises DeviceMissingError at connect; a
read error mid-session (cable pulled) is reported as DeviceMissingError and the robot holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.core.errors import DeviceMissingError, DeviceNotConnectedError
from tandem.core.validate import one_of
from tandem.hardware.features import ACTION_KEY, Feature
from tandem.teleop.keyboard import KeyboardConfig, KeyboardTeleop
from tandem.teleop.teleoperator import DeviceContext, TakeoverSettings, Teleoperator, TeleopEvents

# lerobot teleoperator type -> its motors, in lerobot's order
LEADER_MOTORS: dict[str, tuple[str, ...]] = {
    "so101_leader": ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"),
    "so100_leader": ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"),
    "koch_leader": ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"),
}

LEADER_HELP = """\
leader arm teleop ({device} on {port}); events from this terminal:
  space      take over with the leader arm / hand back to the policy
  y          mark success (ends the episode)
  n          mark failure (ends the episode)
  e          re-record this episode
  q          stop the session     (Ctrl-C also stops)"""


@dataclass
class LeaderArmConfig(TakeoverSettings):
    """A lerobot leader arm.

    Attributes:
        type: registry key, always "leader".
        device: lerobot teleoperator type: "so101_leader", "so100_leader" or "koch_leader".
        port: the arm's serial port.
        id: calibration id (lerobot stores ``<calibration_dir>/<id>.json``).
        calibration_dir: calibration folder ("" = lerobot's default).
        calibrate: run lerobot's interactive calibration on connect if the arm is not calibrated.
        use_degrees: SO leaders: joint positions in degrees (else lerobot's -100..100 range).
        events: where takeover and episode events come from: "keyboard" (this terminal) or "none".
        tty: terminal for the events ("" = stdin).
    """

    type: str = "leader"
    device: str = "so101_leader"
    port: str = "/dev/ttyACM0"
    id: str = "leader"
    calibration_dir: str = ""
    calibrate: bool = True
    use_degrees: bool = True
    events: str = "keyboard"
    tty: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("teleop.device", self.device, LEADER_MOTORS)
        one_of("teleop.events", self.events, ("keyboard", "none"))


def lerobot_config(config: LeaderArmConfig) -> Any:
    """lerobot's TeleoperatorConfig for ``config`` (imports lerobot)."""
    calibration_dir = Path(config.calibration_dir) if config.calibration_dir else None
    if config.device == "koch_leader":
        from lerobot.teleoperators.koch_leader import KochLeaderConfig

        return KochLeaderConfig(port=config.port, id=config.id, calibration_dir=calibration_dir)
    from lerobot.teleoperators.so_leader import SOLeaderTeleopConfig

    return SOLeaderTeleopConfig(port=config.port, id=config.id, calibration_dir=calibration_dir, use_degrees=config.use_degrees)


class LeaderArmTeleop(Teleoperator):
    """A lerobot leader arm plus (optionally) the terminal keyboard for events.

    Args:
        config: the settings.
        context: the session context (unused).
        teleop: an already built lerobot Teleoperator (tests); None: built from the config on connect.
    """

    name = "leader"

    def __init__(self, config: LeaderArmConfig, context: DeviceContext | None = None, teleop: Any = None) -> None:
        self.config = config
        self.context = context or DeviceContext()
        self._teleop = teleop
        self._given = teleop is not None
        self._connected = False
        self._keyboard = KeyboardTeleop(KeyboardConfig(tty=config.tty)) if config.events == "keyboard" else None
        self._keys = tuple(f"{m}.pos" for m in LEADER_MOTORS[config.device])

    @property
    def action_features(self) -> dict[str, Feature]:
        """float32[6] joint positions named ``<motor>.pos`` (lerobot's units)."""
        return {ACTION_KEY: Feature("float32", (len(self._keys),), names=self._keys)}

    @property
    def is_connected(self) -> bool:
        """The arm (and the event keyboard, if any) are open."""
        return self._connected and (self._keyboard is None or self._keyboard.is_connected)

    def help_text(self) -> str:
        """Which keys give the events."""
        if self._keyboard is None:
            return f"leader arm teleop ({self.config.device} on {self.config.port}); no event keys (events: none)"
        return LEADER_HELP.format(device=self.config.device, port=self.config.port)

    def connect(self) -> None:
        """Open the arm through lerobot (and the event keyboard)."""
        if not self._given:
            if not os.path.exists(self.config.port):
                raise DeviceMissingError(
                    f"teleop.port={self.config.port!r} does not exist: plug the {self.config.device} in "
                    f"(lerobot-find-port lists the ports)"
                )
            from lerobot.teleoperators.utils import make_teleoperator_from_config

            self._teleop = make_teleoperator_from_config(lerobot_config(self.config))
        try:
            self._teleop.connect(calibrate=self.config.calibrate)
        except (OSError, ConnectionError) as exc:
            raise DeviceMissingError(f"{self.config.device} on {self.config.port}: {exc}") from exc
        got = tuple(self._teleop.action_features)
        if set(got) != set(self._keys):
            self._teleop.disconnect()
            raise ValueError(f"{self.config.device} reports actions {list(got)}, expected {list(self._keys)}")
        self._connected = True
        if self._keyboard is not None:
            self._keyboard.connect()

    def disconnect(self) -> None:
        """Close the event keyboard and the arm. Safe to call twice."""
        try:
            if self._keyboard is not None:
                self._keyboard.disconnect()
        finally:
            if self._connected and self._teleop is not None:
                self._connected = False
                try:
                    self._teleop.disconnect()
                except Exception:  # an unplugged arm may fail to close; it is gone either way
                    pass

    def get_action(self) -> np.ndarray:
        """The leader's joint positions, float32[6] in the follower's order."""
        if not self._connected:
            raise DeviceNotConnectedError("leader arm is not connected. Run .connect() first.")
        try:
            values = self._teleop.get_action()
        except (OSError, ConnectionError, RuntimeError) as exc:
            raise DeviceMissingError(f"{self.config.device} read failed: {exc}") from exc
        return np.array([float(values[k]) for k in self._keys], np.float32)

    def get_events(self) -> TeleopEvents:
        """Events from the terminal keyboard (none without one)."""
        if not self._connected:
            raise DeviceNotConnectedError("leader arm is not connected. Run .connect() first.")
        return self._keyboard.get_events() if self._keyboard is not None else TeleopEvents()

    def reset(self) -> None:
        """New episode."""
        if self._keyboard is not None:
            self._keyboard.reset()
