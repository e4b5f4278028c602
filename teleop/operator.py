"""The operator contract the controller sees: who may take over, and what they did this tick.

The takeover state machine over a teleop device (``teleop/takeover.py``) and the scripted operators
follow it; the control loop's controller consumes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class OperatorOutput:
    """What an operator (human or scripted) did this tick.

    Attributes:
        action: float32[A] when the human is in control, else None.
        takeover_start: first tick of a takeover.
        blend: weight in [0, 1] of the policy's action during handback (1 = fully policy).
        events: operator events this tick ("success", "failure", "rerecord", "stop").
        hold: ``action`` is a hold (the operator's device is lost), not a human action.
        anchor: float32[A], what the policy's action is blended with when ``blend`` < 1 (None: the
            last sent action).
    """

    action: np.ndarray | None = None
    takeover_start: bool = False
    blend: float = 1.0
    events: tuple[str, ...] = ()
    hold: bool = False
    anchor: np.ndarray | None = None


class Operator(Protocol):
    """Who may take over: the takeover state machine over a teleop device or a scripted operator."""

    def reset(self) -> None:
        """New episode."""

    def step(self, observation: dict[str, np.ndarray], policy_action: np.ndarray, tick: int) -> OperatorOutput:
        """Observe the policy's proposed action and decide whether a human acts this tick."""
