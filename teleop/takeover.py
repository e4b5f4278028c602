"""The takeover state machine: a teleoperator as the runtime's ``Operator``.

States and transitions (one ``step`` per control tick)::

    AUTONOMOUS --takeover toggle / intervene held--> HUMAN
    HUMAN      --toggle again / intervene released--> HANDBACK --fade_ticks later--> AUTONOMOUS
    HANDBACK   --takeover again--> HUMAN
    any        --device lost--> LOST --device reconnected--> HANDBACK

- HUMAN: the device's action is sent (through the same safety filter as the policy's). On the k-th
  tick of a takeover (k = 1..R, R = ``ramp_ticks``) the action is ``anchor + (k/R) (device - anchor)``,
  where ``anchor`` is the last action sent before the takeover, so the robot never jumps to the
  device's pose; from tick R on it is the device's action.
- HANDBACK: the policy's action is faded in linearly: on the j-th tick (j = 1..F, F = ``fade_ticks``)
  ``blend = j / (F + 1)`` and the controller sends ``blend * policy + (1 - blend) * anchor``, where
  ``anchor`` is the last action sent before the handback (the human's). With a steady policy each
  tick moves the action by ``|policy - anchor| / (F + 1)``.
- LOST: the device raised (unplugged, terminal closed). The error is logged once and the robot is
  sent its hold action (``Robot.hold_action``), flagged as a hold, not as a human action, until the
  device reconnects (tried every ``reconnect_s``); then the policy is faded back in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from tandem.core.registry import component_class
from tandem.teleop.operator import OperatorOutput
from tandem.teleop.teleoperator import DeviceContext, Event, TakeoverSettings, Teleoperator

log = logging.getLogger(__name__)


class Mode(StrEnum):
    """Who is in control."""

    AUTONOMOUS = "autonomous"
    HUMAN = "human"
    HANDBACK = "handback"
    LOST = "lost"


@dataclass
class TakeoverStats:
    """Counters over the operator's life (all episodes)."""

    takeovers: int = 0
    human_ticks: int = 0
    handback_ticks: int = 0
    lost_ticks: int = 0
    device_lost: int = 0
    reconnects: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-ready dict."""
        return dict(self.__dict__)


class TakeoverOperator:
    """Implements ``tandem.runtime.control.controller.Operator`` over a :class:`Teleoperator`.

    Args:
        device: the teleoperator (keyboard, gamepad, leader arm, scripted operator).
        settings: ramp/fade/reconnect settings (every teleop config is a ``TakeoverSettings``).
        last_sent: returns the last action sent to the robot, float32[A], or None before any
            (the safety filter's ``last``).
        hold: maps the last sent action (or None) to an action that keeps the robot still
            (``Robot.hold_action``).
        clock: monotonic clock in seconds (tests may pass their own).
    """

    def __init__(
        self,
        device: Teleoperator,
        settings: TakeoverSettings,
        last_sent: Callable[[], np.ndarray | None],
        hold: Callable[[np.ndarray | None], np.ndarray],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = device
        self.settings = settings
        self.last_sent = last_sent
        self.hold = hold
        self.clock = clock
        self.stats = TakeoverStats()
        self.mode = Mode.AUTONOMOUS
        self._toggled = False
        self._ramp_k = 0
        self._fade_j = 0
        self._anchor: np.ndarray | None = None
        self._next_reconnect = 0.0

    # -- lifecycle ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect the device and show its controls."""
        self.device.connect()
        text = self.device.help_text()
        if text:
            print(text, flush=True)

    def disconnect(self) -> None:
        """Disconnect the device (safe to call twice)."""
        self.device.disconnect()

    def reset(self) -> None:
        """New episode: the policy starts in control (a lost device stays lost)."""
        if self.mode != Mode.LOST:
            self.mode = Mode.AUTONOMOUS
        self._toggled = False
        self._ramp_k = self._fade_j = 0
        self.device.reset()

    # -- per tick -----------------------------------------------------------------------------
    def step(self, observation: dict[str, np.ndarray], policy_action: np.ndarray, tick: int) -> OperatorOutput:
        """Decide who acts this tick. See the module docstring for the rules."""
        if self.mode == Mode.LOST and not self._try_reconnect():
            return self._hold_output()
        try:
            self.device.observe(observation, policy_action, tick)
            polled = self.device.get_events()
        except Exception as exc:  # any device failure: hold the robot, report once
            return self._lose(exc)
        events: list[str] = []
        for event in polled.events:
            if event == Event.TAKEOVER.value:
                self._toggled = not self._toggled
            else:
                events.append(event)
        wants_control = self._toggled or bool(polled.intervene)
        takeover_start = False
        if wants_control and self.mode in (Mode.AUTONOMOUS, Mode.HANDBACK):
            self._start_takeover()
            takeover_start = True
        elif not wants_control and self.mode == Mode.HUMAN:
            self._start_handback()
        if self.mode == Mode.HUMAN:
            try:
                action = np.asarray(self.device.get_action(), np.float32)
            except Exception as exc:
                out = self._lose(exc)
                out.events = tuple(events) + out.events
                return out
            self.stats.human_ticks += 1
            return OperatorOutput(action=self._ramp(action), takeover_start=takeover_start, events=tuple(events))
        if self.mode == Mode.HANDBACK:
            self._fade_j += 1
            if self._fade_j > self.settings.fade_ticks:
                self.mode = Mode.AUTONOMOUS
            else:
                self.stats.handback_ticks += 1
                blend = self._fade_j / (self.settings.fade_ticks + 1)
                return OperatorOutput(blend=blend, anchor=self._anchor.copy(), events=tuple(events))
        return OperatorOutput(events=tuple(events))

    # -- between episodes -----------------------------------------------------------------------
    def wait_for_reset(self, timeout_s: float, stop: Any = None, poll_s: float = 0.02) -> str:
        """The reset phase between episodes: wait until the operator confirms the scene is reset.

        The takeover toggle (keyboard space, the gamepad's takeover button) or a success mark confirms;
        a stop event ends the session. Returns "confirmed", "stop", "timeout" (``timeout_s`` passed, or
        the device is lost: the next episode starts by itself) or "stopped" (``stop``, a
        ``threading.Event``, was set). The robot is not commanded meanwhile: a position-controlled arm
        holds its last goal with torque on.
        """
        deadline = self.clock() + timeout_s
        lost = False
        while self.clock() < deadline:
            if stop is not None and stop.is_set():
                return "stopped"
            if not lost:
                try:
                    events = self.device.get_events().events
                except Exception as exc:  # noqa: BLE001 - a lost device cannot confirm; wait out the timeout
                    log.error("teleop device %r lost during the reset phase (%s); the next episode starts "
                              "in %.0f s", self.device.name, exc, deadline - self.clock())
                    lost = True
                    events = ()
                if Event.STOP.value in events:
                    return "stop"
                if Event.TAKEOVER.value in events or Event.SUCCESS.value in events:
                    return "confirmed"
            time.sleep(poll_s)
        return "timeout"

    # -- internals ----------------------------------------------------------------------------
    def _start_takeover(self) -> None:
        last = self.last_sent()
        anchor = self.hold(None) if last is None else np.asarray(last, np.float32)
        self._anchor = anchor.astype(np.float32, copy=True)
        self.device.sync(self._anchor.copy())
        self.mode = Mode.HUMAN
        self._ramp_k = 0
        self.stats.takeovers += 1

    def _start_handback(self) -> None:
        last = self.last_sent()
        anchor = self.hold(None) if last is None else np.asarray(last, np.float32)
        self._anchor = anchor.astype(np.float32, copy=True)
        self.mode = Mode.HANDBACK
        self._fade_j = 0

    def _ramp(self, action: np.ndarray) -> np.ndarray:
        """``anchor + (k/R) (action - anchor)`` on the k-th human tick, k <= R; ``action`` after."""
        if action.shape != self._anchor.shape:
            raise ValueError(
                f"teleop device {self.device.name!r} gave a {action.shape} action; the robot takes {self._anchor.shape}"
            )
        self._ramp_k += 1
        ramp = self.settings.ramp_ticks
        if ramp == 0 or self._ramp_k >= ramp:
            return action
        w = self._ramp_k / ramp
        return (self._anchor + w * (action - self._anchor)).astype(np.float32)

    def _hold_output(self) -> OperatorOutput:
        self.stats.lost_ticks += 1
        return OperatorOutput(action=np.asarray(self.hold(self.last_sent()), np.float32), hold=True)

    def _lose(self, exc: BaseException) -> OperatorOutput:
        log.error(
            "teleop device %r lost (%s): holding the robot; reconnecting every %.1f s (Ctrl-C stops the session)",
            self.device.name, exc, self.settings.reconnect_s,
        )
        self.stats.device_lost += 1
        try:
            self.device.disconnect()
        except Exception as close_exc:  # the device is gone; closing it may fail too
            log.debug("closing the lost device failed: %s", close_exc)
        self.mode = Mode.LOST
        self._toggled = False
        self._next_reconnect = self.clock() + self.settings.reconnect_s
        out = self._hold_output()
        out.events = ("device_lost",)
        return out

    def _try_reconnect(self) -> bool:
        if self.settings.reconnect_s <= 0 or self.clock() < self._next_reconnect:
            return False
        self._next_reconnect = self.clock() + self.settings.reconnect_s
        try:
            self.device.connect()
        except Exception as exc:
            log.debug("teleop device %r still missing: %s", self.device.name, exc)
            return False
        log.warning("teleop device %r is back; handing control back to the policy", self.device.name)
        self.stats.reconnects += 1
        self._start_handback()
        return True


def make_operator(config: Any, robot: Any, last_sent: Callable[[], np.ndarray | None]) -> TakeoverOperator | None:
    """The operator for a teleop config (None for ``teleop=none`` or no config).

    Args:
        config: a teleop config (``type`` selects the device in ``tandem.core.registry``).
        robot: the session's robot (its task, rate, action schema and hold action).
        last_sent: returns the last action the safety filter sent (None before any).
    """
    if config is None or config.type == "none":
        return None

    context = DeviceContext(instruction=lambda: robot.task, fps=robot.fps, action_feature=robot.action_feature)
    device = component_class("teleop", config.type)(config, context)
    want, got = robot.action_feature, device.action_feature
    if tuple(got.shape) != tuple(want.shape):
        raise ValueError(
            f"teleop={config.type} gives {got.shape} actions but robot {robot.name!r} takes {want.shape}; "
            f"pick a teleop device for this robot"
        )
    if want.names and got.names and tuple(want.names) != tuple(got.names):
        raise ValueError(
            f"teleop={config.type} action names {list(got.names)} differ from robot {robot.name!r}'s {list(want.names)}"
        )
    return TakeoverOperator(device, config, last_sent=last_sent, hold=robot.hold_action)
