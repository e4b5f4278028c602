"""Gamepad teleoperation through pygame's joystick API (imported on ``connect``).

Hold RB to intervene (as in lerobot's gamepad teleop): the human is in control while the button is
held and hands back on release. Left stick: x/y; right stick vertical: z; A toggles the gripper
(closed/open, latched). Y, B and X mark success, failure or re-record; Start stops the session.
Button and axis indices differ between pads; they are configurable and the defaults fit an
Xbox-layout pad on Linux (xpad). Works without a display (SDL's dummy video driver).

An unplugged pad (SDL's JOYDEVICEREMOVED event) makes the device report itself lost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from tandem.core.errors import ConfigError, DeviceMissingError, DeviceNotConnectedError
from tandem.core.validate import in_range, non_negative
from tandem.hardware.features import ACTION_KEY, Feature
from tandem.teleop.teleoperator import DeviceContext, Event, TakeoverSettings, Teleoperator, TeleopEvents

GAMEPAD_HELP = """\
gamepad teleop:
  hold RB            take over (release to hand back to the policy)
  left stick         move x / y
  right stick (vert) move z
  A                  close / open the gripper (toggle)
  Y / B / X          mark success / mark failure / re-record the episode
  Start              stop the session"""


@dataclass
class GamepadConfig(TakeoverSettings):
    """Gamepad teleop settings.

    Attributes:
        type: registry key, always "gamepad".
        index: joystick index (0: the first pad SDL finds).
        speed: action units at full stick deflection (MetaWorld: 1 = 1 cm per tick).
        deadzone: stick values below this magnitude read as 0.
        axes: stick axis indices for x, y, z.
        invert: per axis, multiply by -1 (SDL's stick "up" is negative).
        intervene_button, gripper_button, success_button, failure_button, rerecord_button,
        stop_button: button indices.
    """

    type: str = "gamepad"
    index: int = 0
    speed: float = 1.0
    deadzone: float = 0.1
    axes: list[int] = field(default_factory=lambda: [0, 1, 4])
    invert: list[bool] = field(default_factory=lambda: [False, True, True])
    intervene_button: int = 5
    gripper_button: int = 0
    success_button: int = 3
    failure_button: int = 1
    rerecord_button: int = 2
    stop_button: int = 7

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative("teleop.index", self.index)
        in_range("teleop.speed", self.speed, 0.0, 1.0)
        in_range("teleop.deadzone", self.deadzone, 0.0, 0.99)
        if len(self.axes) != 3 or len(self.invert) != 3:
            raise ConfigError("teleop.axes", self.axes, "three axis indices (x, y, z) and three invert flags")


class GamepadTeleop(Teleoperator):
    """A pygame joystick: hold-to-intervene, sticks for motion, buttons for events.

    Args:
        config: the settings.
        context: the session context (unused).
        joystick: an already opened joystick-like object (``get_axis``, ``get_button``,
            ``get_numaxes``, ``get_numbuttons``); None: open pad ``config.index`` on connect.
    """

    name = "gamepad"

    def __init__(self, config: GamepadConfig, context: DeviceContext | None = None, joystick: object = None) -> None:
        self.config = config
        self.context = context or DeviceContext()
        self._joystick = joystick
        self._given = joystick is not None
        self._pygame = None
        self._connected = False
        self._lost: str | None = None
        self._buttons: dict[int, bool] = {}
        self._gripper = 0.0

    @property
    def action_features(self) -> dict[str, Feature]:
        """float32[4]: dx, dy, dz, gripper, each in [-1, 1]."""
        return {ACTION_KEY: Feature("float32", (4,), names=("dx", "dy", "dz", "gripper"),
                                    low=(-1.0,) * 4, high=(1.0,) * 4)}

    @property
    def is_connected(self) -> bool:
        """Open and not unplugged."""
        return self._connected and self._lost is None

    def help_text(self) -> str:
        """The button map."""
        return GAMEPAD_HELP

    def connect(self) -> None:
        """Open the pad. Raises DeviceMissingError if there is none at ``index``."""
        self._lost = None
        self._buttons = {}
        if not self._given:
            os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
            if not os.environ.get("DISPLAY"):
                os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            import pygame

            pygame.display.init()  # the event queue needs the video subsystem
            pygame.joystick.init()
            self._pygame = pygame
            count = pygame.joystick.get_count()
            if count <= self.config.index:
                raise DeviceMissingError(
                    f"no gamepad at teleop.index={self.config.index} ({count} found); plug one in or use teleop=keyboard"
                )
            self._joystick = pygame.joystick.Joystick(self.config.index)
            self._joystick.init()
        self._connected = True

    def disconnect(self) -> None:
        """Close the pad. Safe to call twice."""
        self._connected = False
        if not self._given and self._joystick is not None:
            try:
                self._joystick.quit()
            except Exception:  # an unplugged pad may already be gone
                pass
            self._joystick = None

    def get_events(self) -> TeleopEvents:
        """RB held -> intervene; newly pressed Y/B/X/Start -> events; A toggles the gripper latch."""
        self._poll()
        events = []
        for button, event in (
            (self.config.success_button, Event.SUCCESS.value),
            (self.config.failure_button, Event.FAILURE.value),
            (self.config.rerecord_button, Event.RERECORD.value),
            (self.config.stop_button, Event.STOP.value),
        ):
            if self._pressed(button):
                events.append(event)
        if self._pressed(self.config.gripper_button):
            self._gripper = -1.0 if self._gripper > 0 else 1.0
        return TeleopEvents(events=tuple(events), intervene=self._read_button(self.config.intervene_button))

    def get_action(self) -> np.ndarray:
        """Stick deflections (dead zone removed) times ``speed``, and the latched gripper."""
        self._require()
        xyz = np.zeros(3, np.float32)
        for i, (axis, flip) in enumerate(zip(self.config.axes, self.config.invert, strict=True)):
            value = float(self._joystick.get_axis(axis)) if axis < self._joystick.get_numaxes() else 0.0
            value = 0.0 if abs(value) < self.config.deadzone else value
            xyz[i] = -value if flip else value
        xyz = np.clip(xyz * self.config.speed, -1.0, 1.0)
        return np.array([xyz[0], xyz[1], xyz[2], self._gripper], np.float32)

    def sync(self, last_action: np.ndarray) -> None:
        """Start the gripper latch from the robot's current gripper command."""
        if last_action.shape[0] >= 4:
            self._gripper = float(np.clip(last_action[3], -1.0, 1.0))

    # -- internals ----------------------------------------------------------------------------
    def _require(self) -> None:
        if self._lost is not None:
            raise DeviceMissingError(f"gamepad lost: {self._lost}")
        if not self._connected:
            raise DeviceNotConnectedError("gamepad teleop is not connected. Run .connect() first.")

    def _poll(self) -> None:
        self._require()
        if self._pygame is not None:
            for event in self._pygame.event.get():
                if event.type == self._pygame.JOYDEVICEREMOVED:
                    self._lost = "unplugged"
            if self._lost is not None:
                raise DeviceMissingError(f"gamepad lost: {self._lost}")

    def _read_button(self, button: int) -> bool:
        return button < self._joystick.get_numbuttons() and bool(self._joystick.get_button(button))

    def _pressed(self, button: int) -> bool:
        """True on the poll where ``button`` goes down (edge), so a held button fires once."""
        down = self._read_button(button)
        was = self._buttons.get(button, False)
        self._buttons[button] = down
        return down and not was
