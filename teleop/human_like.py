"""A human-like scripted operator for simulated MetaWorld robots (``teleop=human``).

It stands in for a person watching the robot, and knows only what that person could know:

- **What it sees**: the robot's state and the scene (MetaWorld's 39-D state: hand, gripper, object,
  goal), ``reaction_s`` late (default 300 ms). Never the policy's proposed action, never the future:
  :meth:`HumanLikeOperator.observe` does not read its ``policy_action`` argument.
- **When it takes over**: from the robot's progress on the task potential (hand->object + object->goal,
  or hand->goal for reach, in metres): *stalled* (no progress of ``progress_eps`` for ``stall_s``),
  *moving away* (the potential rose ``away_m`` above its best of the episode) or *about to fail* (an
  object that was lifted ``lift_m`` dropped by ``drop_m``). A new episode gets ``grace_s`` before any
  rule may fire (a person lets the robot start).
- **How it drives**: with an imperfect controller: the task's scripted expert on the delayed state,
  scaled by ``skill`` (slower, more cautious than the expert) plus Gaussian ``noise_std``.
- **How long**: it holds control for a human-like span, at least ``min_hold_s``, at most ``max_hold_s``,
  handing back early once the potential is ``recover_m`` below its value at the takeover; then it waits
  ``cooldown_s``; it takes over at most ``max_takeovers`` times and drives at most ``max_share`` of an
  episode's ticks so far.

The oracle variant (``teleop=scripted``, ``tandem.teleop.scripted_operator``) sees the policy's
proposal and compares it with the expert's action; it is for tests and ablations, not for results.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from tandem.core.validate import in_range, non_negative, one_of, positive
from tandem.hardware.features import STATE_KEY
from tandem.hardware.metaworld_robot import ACTION_DIM, TASK_INSTRUCTIONS
from tandem.teleop.scripted_operator import ExpertOperator, task_potential
from tandem.teleop.teleoperator import DeviceContext, TakeoverSettings, TeleopEvents

OBJECT_Z = 6  # MetaWorld state: the first object's height


@dataclass
class HumanLikeOperatorConfig(TakeoverSettings):
    """Human-like operator settings (see the module docstring for the rules).

    Attributes:
        type: registry key, always "human_like".
        task: MetaWorld task whose expert it drives with ("auto": the robot's current task).
        reaction_s: how late it sees the world (s).
        grace_s: no rule fires this early in an episode (s).
        stall_s: seconds without progress that make it take over (0: rule off).
        progress_eps: decrease of the task potential (m) that counts as progress.
        away_m: rise of the potential above its best (m) that counts as moving away (0: rule off).
        lift_m, drop_m: an object lifted this high above its start (m) that falls this far (m) is about
            to be lost (drop_m 0: rule off).
        skill: scale of its expert action, in (0, 1] (1: as fast as the expert).
        noise_std: std of Gaussian noise on its actions (action units).
        min_hold_s, max_hold_s: shortest and longest takeover (s).
        recover_m: potential decrease since the takeover (m) that lets it hand back after ``min_hold_s``.
        cooldown_s: seconds after a handback before a rule may fire again.
        max_takeovers: takeovers per episode (0: only watches).
        max_share: the largest fraction of an episode's ticks so far it drives.
        seed: noise seed.
    """

    type: str = "human_like"
    task: str = "auto"
    reaction_s: float = 0.3
    grace_s: float = 0.5
    stall_s: float = 1.5
    progress_eps: float = 0.01
    away_m: float = 0.05
    lift_m: float = 0.03
    drop_m: float = 0.02
    skill: float = 0.7
    noise_std: float = 0.1
    min_hold_s: float = 1.0
    max_hold_s: float = 3.0
    recover_m: float = 0.05
    cooldown_s: float = 1.0
    max_takeovers: int = 5
    max_share: float = 0.5
    seed: int = 0
    ramp_ticks: int = 5
    fade_ticks: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task != "auto":
            one_of("teleop.task", self.task, TASK_INSTRUCTIONS)
        in_range("teleop.reaction_s", self.reaction_s, 0.0, 10.0)
        for name in ("grace_s", "stall_s", "progress_eps", "away_m", "lift_m", "drop_m", "noise_std", "recover_m",
                     "cooldown_s", "max_takeovers"):
            non_negative(f"teleop.{name}", getattr(self, name))
        in_range("teleop.skill", self.skill, 1e-3, 1.0)
        positive("teleop.max_hold_s", self.max_hold_s)
        in_range("teleop.min_hold_s", self.min_hold_s, 0.0, self.max_hold_s)
        in_range("teleop.max_share", self.max_share, 0.0, 1.0)


def _ticks(seconds: float, fps: float) -> int:
    return int(math.ceil(seconds * fps - 1e-9))


class HumanLikeOperator(ExpertOperator):
    """A person at a MetaWorld robot: watches its progress late, takes over imperfectly, for a while."""

    name = "human_like"

    def __init__(self, config: HumanLikeOperatorConfig, context: DeviceContext | None = None) -> None:
        super().__init__(config, context)
        fps = self.context.fps
        c = config
        self._delay = _ticks(c.reaction_s, fps)
        self._grace, self._stall = _ticks(c.grace_s, fps), _ticks(c.stall_s, fps)
        self._min_hold, self._max_hold = _ticks(c.min_hold_s, fps), max(1, _ticks(c.max_hold_s, fps))
        self._cooldown_ticks = _ticks(c.cooldown_s, fps)
        self.last_reason = ""
        self.reset()

    def help_text(self) -> str:
        """One line saying who is watching."""
        c = self.config
        return (f"human-like operator: sees the robot {c.reaction_s * 1000:.0f} ms late, takes over when it stalls "
                f"({c.stall_s} s), moves away or drops the object; up to {c.max_takeovers} takeovers per episode")

    def reset(self) -> None:
        """New episode: resolve the task, clear what it remembers, refill its budget."""
        super().reset()
        self._seen: deque[np.ndarray] = deque(maxlen=self._delay + 1)
        self._ticks_seen = 0
        self._steering = False
        self._held = 0
        self._cooldown = 0
        self._best = math.inf
        self._since_progress = 0
        self._start_z: float | None = None
        self._peak_z = -math.inf
        self._potential_at_takeover = math.inf
        self._driven = 0
        self._action = np.zeros(ACTION_DIM, np.float32)
        self.last_reason = ""

    def observe(self, observation: dict[str, np.ndarray], policy_action: np.ndarray, tick: int) -> None:
        """See the robot's state (``reaction_s`` late) and decide. ``policy_action`` is never read."""
        del policy_action  # a person cannot see what the policy is about to do
        self._seen.append(np.asarray(observation[STATE_KEY], np.float64).copy())
        self._ticks_seen += 1
        if self._steering:
            self._driven += 1
        if len(self._seen) <= self._delay:
            return  # nothing has reached its eyes yet
        state = self._seen[0]
        potential = task_potential(self.task, state)
        self._track(state, potential)
        if self._steering:
            self._held += 1
            recovered = self._held >= self._min_hold and potential <= self._potential_at_takeover - self.config.recover_m
            if recovered or self._held >= self._max_hold or self._over_share():
                self._hand_back()
        elif self._cooldown > 0:
            self._cooldown -= 1
        elif self.episode_takeovers < self.config.max_takeovers and not self._over_share():
            reason = self._reason(potential)
            if reason:
                self._steering, self._held, self.last_reason = True, 0, reason
                self._potential_at_takeover = potential
                self.episode_takeovers += 1
        expert = np.clip(np.asarray(self._expert().get_action(state), np.float32), -1.0, 1.0)
        action = expert * np.float32(self.config.skill)
        action[3] = expert[3]  # the gripper is opened or closed, not scaled
        if self.config.noise_std > 0:
            action = action + self._rng.normal(0.0, self.config.noise_std, action.shape).astype(np.float32)
        self._action = np.clip(action, -1.0, 1.0).astype(np.float32)

    def get_events(self) -> TeleopEvents:
        """Intervene while it drives."""
        return TeleopEvents(intervene=self._steering)

    def get_action(self) -> np.ndarray:
        """Its action for the (delayed) state: the expert's, scaled by skill, plus noise."""
        return self._action.copy()

    # -- internals ----------------------------------------------------------------------------
    def _track(self, state: np.ndarray, potential: float) -> None:
        if potential < self._best - self.config.progress_eps:
            self._best, self._since_progress = potential, 0
        else:
            self._since_progress += 1
        z = float(state[OBJECT_Z])
        if self._start_z is None:
            self._start_z = z
        self._peak_z = max(self._peak_z, z)

    def _reason(self, potential: float) -> str:
        """Why it takes over now ("" if it does not): stalled, moving away, about to drop."""
        c = self.config
        if self._ticks_seen - self._delay < self._grace:
            return ""
        if self._stall and self._since_progress >= self._stall:
            return "stalled"
        if c.away_m and potential > self._best + c.away_m:
            return "moving away"
        lifted = self._start_z is not None and self._peak_z - self._start_z >= c.lift_m
        if c.drop_m and lifted and self._peak_z - float(self._seen[0][OBJECT_Z]) >= c.drop_m:
            return "dropping"
        return ""

    def _over_share(self) -> bool:
        return self._driven >= self.config.max_share * max(self._ticks_seen, 1)

    def _hand_back(self) -> None:
        self._steering = False
        self._cooldown = self._cooldown_ticks
        self._since_progress = 0
        self._best = math.inf  # judge the robot afresh from here
        self._peak_z = -math.inf if self._start_z is None else self._start_z
