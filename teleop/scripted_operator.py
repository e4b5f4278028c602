"""A scripted operator for simulated MetaWorld robots: the task's expert stands in for a human.

It watches every tick (``observe``): the state from ``observation.state`` (MetaWorld's 39-D state)
and the policy's proposed action. It takes over (reports ``intervene``) when a rule fires:

- divergence: the policy's action differs from the expert's (L2 norm over the action, both
  clipped to [-1, 1]) by more than ``divergence`` on ``divergence_ticks`` consecutive ticks;
- stall: the task makes no progress for ``stall_s`` seconds: the task potential (hand->goal for
  reach; hand->object + object->goal otherwise, in metres) has not fallen ``progress_eps`` below
  its best value of the episode.

While in control it steers with the expert's action (plus Gaussian ``noise_std``), and hands back
after ``steer_ticks`` ticks, or earlier once the state has recovered: at least ``min_steer_ticks``
ticks steered, the potential is ``recover_progress`` lower than at the takeover, and the policy's
proposals have agreed with the expert for the last ``divergence_ticks`` ticks. After a handback it waits ``cooldown_ticks`` before
a rule may fire again, and it takes over at most ``max_takeovers`` times per episode.

Competence: ``delay_ticks`` makes it see the world that many ticks late (its rules and its
steering both use the delayed state, like a human's reaction time) and ``noise_std`` makes its
hands shaky. The takeover state machine ramps its action in and fades the policy back in, as for
a human.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from tandem.core.validate import in_range, non_negative, one_of, positive
from tandem.hardware.features import ACTION_KEY, STATE_KEY, Feature
from tandem.hardware.metaworld_robot import ACTION_DIM, TASK_INSTRUCTIONS, expert_for, task_for_instruction
from tandem.teleop.teleoperator import DeviceContext, TakeoverSettings, Teleoperator, TeleopEvents


@dataclass
class ScriptedOperatorConfig(TakeoverSettings):
    """Scripted operator settings (see the module docstring for the rules).

    Attributes:
        type: registry key, always "scripted".
        task: MetaWorld task whose expert steers ("auto": the robot's current task).
        divergence: L2 distance between policy and expert actions that counts as straying.
        divergence_ticks: m, consecutive straying ticks that trigger a takeover (0: rule off).
        stall_s: T, seconds without progress that trigger a takeover (0: rule off).
        progress_eps: decrease of the task potential (m) that counts as progress.
        steer_ticks: n, the longest a takeover lasts (ticks).
        min_steer_ticks: the shortest a takeover lasts (ticks).
        recover_progress: potential decrease since the takeover (m) that counts as recovered.
        cooldown_ticks: ticks after a handback before a rule may fire again.
        max_takeovers: takeover budget per episode (0: only watches).
        noise_std: std of Gaussian noise on the operator's actions (action units).
        delay_ticks: the operator sees the state this many ticks late.
        seed: noise seed.
    """

    type: str = "scripted"
    task: str = "auto"
    divergence: float = 0.3
    divergence_ticks: int = 3
    stall_s: float = 1.0
    progress_eps: float = 0.01
    steer_ticks: int = 60
    min_steer_ticks: int = 15
    recover_progress: float = 0.05
    cooldown_ticks: int = 20
    max_takeovers: int = 10
    noise_std: float = 0.0
    delay_ticks: int = 0
    seed: int = 0
    ramp_ticks: int = 5
    fade_ticks: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task != "auto":
            one_of("teleop.task", self.task, TASK_INSTRUCTIONS)
        positive("teleop.divergence", self.divergence)
        non_negative("teleop.divergence_ticks", self.divergence_ticks)
        non_negative("teleop.stall_s", self.stall_s)
        non_negative("teleop.progress_eps", self.progress_eps)
        in_range("teleop.steer_ticks", self.steer_ticks, 1, 100_000)
        in_range("teleop.min_steer_ticks", self.min_steer_ticks, 0, self.steer_ticks)
        non_negative("teleop.recover_progress", self.recover_progress)
        non_negative("teleop.cooldown_ticks", self.cooldown_ticks)
        non_negative("teleop.max_takeovers", self.max_takeovers)
        non_negative("teleop.noise_std", self.noise_std)
        in_range("teleop.delay_ticks", self.delay_ticks, 0, 1000)


def task_potential(task: str, state: np.ndarray) -> float:
    """Distance-to-done of a MetaWorld state (metres; lower is better).

    ``state`` is MetaWorld's 39-D state: hand xyz [0:3], gripper [3], first object xyz [4:7],
    ..., goal xyz [36:39]. Reach: hand->goal. Other tasks: hand->object + object->goal.
    """
    hand, obj, goal = state[0:3], state[4:7], state[36:39]
    if task.startswith("reach"):
        return float(np.linalg.norm(hand - goal))
    return float(np.linalg.norm(hand - obj) + np.linalg.norm(obj - goal))


class ExpertOperator(Teleoperator):
    """What the MetaWorld stand-ins for a human share: the action schema, a connection that is always
    there, the task (``config.task``, "auto": the robot's current one, resolved at :meth:`reset`), its
    scripted expert, a noise RNG and the per-episode takeover count. Subclasses decide when to take over
    and what to do (``observe``, ``get_events``, ``get_action``) and extend :meth:`reset`."""

    def __init__(self, config: object, context: DeviceContext | None = None) -> None:
        self.config = config
        self.context = context or DeviceContext()
        self._experts: dict[str, object] = {}
        self._rng = np.random.default_rng(config.seed)
        self._connected = False
        self.episode_takeovers = 0

    @property
    def action_features(self) -> dict[str, Feature]:
        """MetaWorld's action: float32[4] dx, dy, dz, gripper in [-1, 1]."""
        return {ACTION_KEY: Feature("float32", (ACTION_DIM,), names=("dx", "dy", "dz", "gripper"),
                                    low=(-1.0,) * ACTION_DIM, high=(1.0,) * ACTION_DIM)}

    @property
    def is_connected(self) -> bool:
        """Always there once connected."""
        return self._connected

    def connect(self) -> None:
        """Nothing to open."""
        self._connected = True

    def disconnect(self) -> None:
        """Nothing to close."""
        self._connected = False

    def reset(self) -> None:
        """New episode: resolve the task and refill the takeover budget."""
        name = self.config.task
        if name == "auto":
            instruction = self.context.instruction()
            name = task_for_instruction(instruction) if instruction else ""
        self.task = name
        self.episode_takeovers = 0

    def _expert(self) -> object:
        if not self.task:
            self.task = task_for_instruction(self.context.instruction())
        if self.task not in self._experts:
            self._experts[self.task] = expert_for(self.task)
        return self._experts[self.task]


class ScriptedOperator(ExpertOperator):
    """The MetaWorld expert as a rule-triggered, hold-to-intervene operator."""

    name = "scripted"

    def __init__(self, config: ScriptedOperatorConfig, context: DeviceContext | None = None) -> None:
        super().__init__(config, context)
        self._stall_ticks = math.ceil(config.stall_s * self.context.fps) if config.stall_s > 0 else 0
        self.reset()

    def help_text(self) -> str:
        """One line saying who is watching."""
        c = self.config
        return (f"scripted operator: takes over when the policy strays (> {c.divergence} for {c.divergence_ticks} ticks) "
                f"or stalls ({c.stall_s} s), up to {c.max_takeovers} times per episode")

    def reset(self) -> None:
        """New episode: resolve the task, clear the rules' memory, refill the budget."""
        super().reset()
        self._history: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=self.config.delay_ticks + 1)
        self._steering = False
        self._steered = 0
        self._cooldown = 0
        self._stray = 0
        self._agree = 0
        self._best = math.inf
        self._since_progress = 0
        self._potential_at_takeover = math.inf
        self._action = np.zeros(ACTION_DIM, np.float32)

    def observe(self, observation: dict[str, np.ndarray], policy_action: np.ndarray, tick: int) -> None:
        """See this tick (delayed by ``delay_ticks``) and update the takeover rules."""
        self._history.append((np.asarray(observation[STATE_KEY], np.float64), np.asarray(policy_action, np.float32)))
        if len(self._history) <= self.config.delay_ticks:
            return  # it has not seen anything yet
        state, proposed = self._history[0]  # delay_ticks ago
        expert = np.clip(np.asarray(self._expert().get_action(state), np.float32), -1.0, 1.0)
        potential = task_potential(self.task, state)
        straying = float(np.linalg.norm(np.clip(proposed, -1.0, 1.0) - expert)) > self.config.divergence
        self._stray = self._stray + 1 if straying else 0
        self._agree = 0 if straying else self._agree + 1
        if potential < self._best - self.config.progress_eps:
            self._best, self._since_progress = potential, 0
        else:
            self._since_progress += 1
        if self._steering:
            self._steered += 1
            recovered = (
                self._steered >= self.config.min_steer_ticks
                and potential <= self._potential_at_takeover - self.config.recover_progress
                and self._agree >= max(self.config.divergence_ticks, 1)
            )
            if recovered or self._steered >= self.config.steer_ticks:
                self._hand_back()
        elif self._cooldown > 0:
            self._cooldown -= 1
        elif self.episode_takeovers < self.config.max_takeovers and self._rule_fires():
            self._steering = True
            self._steered = 0
            self._potential_at_takeover = potential
            self.episode_takeovers += 1
        action = expert
        if self.config.noise_std > 0:
            action = expert + self._rng.normal(0.0, self.config.noise_std, expert.shape).astype(np.float32)
        self._action = np.clip(action, -1.0, 1.0).astype(np.float32)

    def get_events(self) -> TeleopEvents:
        """Intervene while steering."""
        return TeleopEvents(intervene=self._steering)

    def get_action(self) -> np.ndarray:
        """The expert's action for the (delayed) state, plus noise."""
        return self._action.copy()

    # -- internals ----------------------------------------------------------------------------
    def _rule_fires(self) -> bool:
        m, t = self.config.divergence_ticks, self._stall_ticks
        return (m > 0 and self._stray >= m) or (t > 0 and self._since_progress >= t)

    def _hand_back(self) -> None:
        self._steering = False
        self._cooldown = self.config.cooldown_ticks
        self._stray = 0
        self._since_progress = 0
