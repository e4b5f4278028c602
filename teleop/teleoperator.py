"""The Teleoperator contract (shaped like lerobot's ``Teleoperator``) and the operator's events.

A teleoperator is a source of human (or scripted stand-in) actions in the robot's action space.
Lifecycle: construct from a config and a :class:`DeviceContext` (cheap, no I/O), read
``action_features`` (valid before connecting), ``connect()``, then per control tick
``observe()`` -> ``get_events()`` -> ``get_action()`` (the last only while the human is in control),
and ``disconnect()`` in ``finally``. The takeover state machine (``tandem.teleop.takeover``) turns a
teleoperator into the runtime's ``Operator``: it decides who is in control, ramps the device's
action in on takeover, and fades the policy back in on handback.

Events (:class:`Event`) are one-shot: a device reports each press once. A device that holds a
button to intervene (a gamepad's RB, a scripted operator) reports ``intervene`` every poll instead
of ``takeover`` toggles. A device that is gone (unplugged, terminal closed) raises
:class:`~tandem.core.errors.DeviceMissingError` from ``connect``, ``get_events`` or ``get_action``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from tandem.core.validate import non_negative
from tandem.hardware.features import ACTION_KEY, Feature


class Event(StrEnum):
    """Operator events. The runtime's episode loop understands the string values."""

    TAKEOVER = "takeover"  # toggle: take over if the policy is in control, else hand back
    SUCCESS = "success"  # mark the episode a success and end it
    FAILURE = "failure"  # mark the episode a failure and end it
    RERECORD = "rerecord"  # discard and re-record this episode
    STOP = "stop"  # stop the session


# Events that end an episode (the loop maps them to its outcome labels).
EPISODE_EVENTS: tuple[str, ...] = (Event.SUCCESS.value, Event.FAILURE.value, Event.RERECORD.value, Event.STOP.value)


@dataclass
class TeleopEvents:
    """What a device reported in one poll.

    Attributes:
        events: one-shot events since the last poll (values of :class:`Event`), in press order.
        intervene: hold-to-intervene state (True while the button is held); None for devices that
            use ``takeover`` toggles only.
    """

    events: tuple[str, ...] = ()
    intervene: bool | None = None


@dataclass
class DeviceContext:
    """What a device may need to know about the session it serves.

    Attributes:
        instruction: returns the current task's language instruction (``Robot.task``; a suite
            switches it between episodes, so read it at ``reset()``).
        fps: the control rate in Hz (ticks per second).
        action_feature: the robot's action schema (shape, names, bounds).
    """

    instruction: Callable[[], str] = lambda: ""
    fps: float = 50.0
    action_feature: Feature = field(default_factory=lambda: Feature("float32", (0,)))


@dataclass
class TakeoverSettings:
    """Handover settings shared by every teleop config (the takeover state machine reads them).

    Attributes:
        ramp_ticks: on takeover, the device's action is ramped in from the last sent action over
            this many ticks (0: the first human tick sends the device's action as is).
        fade_ticks: on handback, the policy's action is faded in over this many ticks (0: switch).
        reconnect_s: while the device is lost, try to reconnect it every this many seconds (0: never).
    """

    ramp_ticks: int = 10
    fade_ticks: int = 10
    reconnect_s: float = 1.0

    def __post_init__(self) -> None:
        non_negative("teleop.ramp_ticks", self.ramp_ticks)
        non_negative("teleop.fade_ticks", self.fade_ticks)
        non_negative("teleop.reconnect_s", self.reconnect_s)


@dataclass
class NoTeleopConfig:
    """No operator: the policy is always in control.

    Attributes:
        type: registry key, always "none".
    """

    type: str = "none"


class Teleoperator(abc.ABC):
    """A source of operator actions and events. See the module docstring for the lifecycle.

    Actions are float32[A] in the robot's action space and units (``action_features["action"]``).
    """

    name: str = "teleoperator"

    @property
    @abc.abstractmethod
    def action_features(self) -> dict[str, Feature]:
        """``{"action": Feature}``: the schema of ``get_action()``; valid before ``connect()``."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """Whether ``connect()`` succeeded and the device has not been lost or disconnected."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the device. Raises DeviceMissingError if it is not there."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Release the device (restore the terminal, close the port). Safe to call twice."""

    @abc.abstractmethod
    def get_action(self) -> np.ndarray:
        """The operator's action for this tick, float32[A]. Raises DeviceMissingError if the device is gone."""

    @abc.abstractmethod
    def get_events(self) -> TeleopEvents:
        """Events since the last poll. Raises DeviceMissingError if the device is gone."""

    def observe(self, observation: dict[str, np.ndarray], policy_action: np.ndarray, tick: int) -> None:
        """See this tick's observation and the policy's proposed action (float32[A]). Humans ignore it."""

    def sync(self, last_action: np.ndarray) -> None:
        """Called at takeover with the last action sent (float32[A]); relative devices start from it."""

    def reset(self) -> None:
        """A new episode starts (clear per-episode state, e.g. a scripted operator's budget)."""

    def help_text(self) -> str:
        """The device's controls, shown when the session starts ("" if none)."""
        return ""

    @property
    def action_feature(self) -> Feature:
        """The action schema (``action_features["action"]``)."""
        return self.action_features[ACTION_KEY]


class NullTeleoperator(Teleoperator):
    """A device that never acts (``teleop=none``); the session builds no operator for it."""

    name = "none"

    def __init__(self, config: NoTeleopConfig, context: DeviceContext) -> None:
        self.config = config
        self.context = context

    @property
    def action_features(self) -> dict[str, Feature]:
        """The robot's own action schema."""
        return {ACTION_KEY: self.context.action_feature}

    @property
    def is_connected(self) -> bool:
        """Always connected."""
        return True

    def connect(self) -> None:
        """Nothing to open."""

    def disconnect(self) -> None:
        """Nothing to close."""

    def get_action(self) -> np.ndarray:
        """Never called by the state machine; zeros."""
        return np.zeros(self.context.action_feature.shape, np.float32)

    def get_events(self) -> TeleopEvents:
        """No events."""
        return TeleopEvents()
