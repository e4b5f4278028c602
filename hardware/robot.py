"""The ``Robot`` contract, shaped like lerobot's ``Robot``.

Lifecycle: construct from a config (cheap, no I/O), read ``observation_features`` and
``action_feature`` (valid before connecting), ``connect()``, then per episode ``reset()`` and per
tick ``get_observation()`` / ``send_action()``; ``disconnect()`` always runs (the session calls it in
``finally``). Robots are context managers.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from tandem.core.errors import DeviceNotConnectedError
from tandem.hardware.features import Feature


@dataclass
class EpisodeStatus:
    """What the robot knows about the running episode after the last ``send_action``.

    Attributes:
        reward: reward of the last step (0 on a real robot without a reward model).
        success: the task is accomplished (sim: the task's own success flag).
        terminated: the episode ended by itself (a true terminal, no bootstrap past it).
    """

    reward: float = 0.0
    success: bool = False
    terminated: bool = False


class Robot(abc.ABC):
    """A robot: real or simulated. Observations and actions are flat numpy arrays keyed by feature name.

    Observation dict: ``{"observation.state": float32[S], "observation.images.<cam>": uint8[H, W, 3]}``.
    Action: ``float32[A]`` in the robot's units (documented by each robot).
    """

    name: str = "robot"
    simulated: bool = False  # a simulation: no scene for a person to reset between episodes

    @property
    @abc.abstractmethod
    def observation_features(self) -> dict[str, Feature]:
        """Observation schema; valid before ``connect()``."""

    @property
    @abc.abstractmethod
    def action_feature(self) -> Feature:
        """Action schema with bounds; valid before ``connect()``."""

    @property
    @abc.abstractmethod
    def task(self) -> str:
        """The language instruction of the current task."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """Whether ``connect()`` succeeded and ``disconnect()`` has not run."""

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks this robot can switch between (a suite); one entry for most robots."""
        return [self.name]

    def set_task(self, name: str) -> None:
        """Switch to task ``name`` of :attr:`tasks` before the next ``reset()``."""
        if name not in self.tasks:
            raise ValueError(f"{self.name} has no task {name!r}; tasks: {self.tasks}")

    @property
    def fps(self) -> float:
        """The rate the robot is meant to be driven at (Hz): ``config.fps`` if the robot has one, else 50."""
        return float(getattr(getattr(self, "config", None), "fps", 50.0))

    @property
    def realtime(self) -> bool:
        """True if the loop must pace ticks on the wall clock: ``config.realtime`` if set, else True (real robots)."""
        return bool(getattr(getattr(self, "config", None), "realtime", True))

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the device (or build the simulation)."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Release the device. Must be safe to call twice and after a failed ``connect()``."""

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (sim: reset the scene with ``seed``; real: go to the home pose)."""

    @abc.abstractmethod
    def get_observation(self) -> dict[str, np.ndarray]:
        """Read the current observation."""

    @abc.abstractmethod
    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Apply ``action`` (float32[A]) and return the action actually sent (after device clipping)."""

    def episode_status(self) -> EpisodeStatus:
        """Reward/success/terminal after the last ``send_action`` (real robots: none known)."""
        return EpisodeStatus()

    def capture_time(self) -> float | None:
        """Wall-clock time (s since epoch) the last observation was captured by the sensors (the oldest
        camera frame); None if the robot cannot tell (the loop then uses the time the read returned)."""
        return None

    def fault_stats(self) -> dict[str, int]:
        """Counters of device faults over the robot's life (e.g. ``read_retries``); empty if none are kept."""
        return {}

    def controlled_stop(self, hold: np.ndarray | None, hold_s: float) -> str:
        """After a fault the session cannot recover from: hold ``hold`` (the last safe command; None: where
        the robot is) for ``hold_s`` seconds with the motors on, before the session disconnects.

        Returns what was done: "held" (a real device held for ``hold_s``), "hold_failed" (the hold
        command could not be sent; the motors keep their last goal while the wait runs) or "none"
        (nothing to hold: a simulation). Never raises for a device error.
        """
        return "none"

    def hold_action(self, last_sent: np.ndarray | None) -> np.ndarray:
        """An action that keeps the robot still, given the last action sent (None before any).

        The default suits position-controlled robots: the last command. Delta- and velocity-controlled
        robots override it with zero motion."""
        if last_sent is not None:
            return np.asarray(last_sent, np.float32).copy()
        low, high = self.action_feature.bounds()
        mid = np.where(np.isfinite(low) & np.isfinite(high), (low + high) / 2, 0.0)
        return mid.astype(np.float32)

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise DeviceNotConnectedError(f"{self.name} is not connected. Run .connect() first.")

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
