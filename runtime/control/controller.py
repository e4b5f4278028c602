"""Deciding each tick's action: base chunk, head, and the human.

Chunk boundaries fall every ``horizon`` (H) ticks of an episode. At a boundary the controller asks
the head for its correction of the base plan's next H ticks (zeros without a head) and runs the
boundary callbacks (weight swaps happen there). Every tick it combines the live base action with the
head's correction; an operator, if any, may take over and replace the action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tandem.core.validate import stride_of
from tandem.runtime.control.scheduler import ChunkScheduler
from tandem.teleop.operator import Operator, OperatorOutput  # noqa: F401  (Operator: the controller's input)


@dataclass
class Decision:
    """What the controller decided for one tick (before the safety filter).

    Attributes:
        action: float32[A] to send, or None if there is nothing fresh (the filter holds).
        base_action: float32[A], the base policy's proposal for this tick (hold if starved).
        head_action: float32[A], what the head added (zeros without a head or during a takeover).
        is_intervention: a human produced ``action``.
        takeover_start: this is the first tick of a takeover.
        starved: the base plan did not cover this tick.
        chunk_index, chunk_step: position of this tick in the H-tick chunk grid.
        head_version, base_version: weights in use.
        features: float16[F], the base policy's embedding of the latest observation it saw.
        base_window: float32[H, A], the base plan for this tick and the next H - 1 as it stood at this
            tick (what the head corrects); None on ticks without a head call unless the controller was
            built with ``windows_every_tick`` (overlapping chunk records need it).
    """

    action: np.ndarray | None
    base_action: np.ndarray
    head_action: np.ndarray
    is_intervention: bool = False
    takeover_start: bool = False
    starved: bool = False
    chunk_index: int = 0
    chunk_step: int = 0
    head_version: int = 0
    base_version: int = 0
    features: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float16))
    events: tuple[str, ...] = ()
    base_window: np.ndarray | None = None


class Head(Protocol):
    """A head on top of the base policy (residual or edit), applied at chunk boundaries."""

    version: int

    def correction(self, observation: dict[str, np.ndarray], features: np.ndarray, base: np.ndarray) -> np.ndarray:
        """float32[H, A] to add to the base window ``base`` (float32[H, A])."""


class Controller:
    """Base scheduler + head + operator.

    Args:
        scheduler: the base chunk scheduler.
        horizon: H, the chunk length of the head, the critic and the chunk records.
        hold: callable returning the hold action (from the safety filter).
        head: optional head.
        operator: optional operator.
        windows_every_tick: put the base plan's H-tick window into every tick's decision, not only at
            boundaries (for chunk records that start between boundaries, ``session.record_stride``).
        head_stride: ticks between head corrections, a divisor of H (0: H, once per chunk at the
            boundary; 1: every tick, receding horizon: the head corrects the plan's H-tick window as it
            stands at each tick and only the correction's first tick runs).
    """

    def __init__(
        self,
        scheduler: ChunkScheduler,
        horizon: int,
        hold: Callable[[], np.ndarray],
        head: Head | None = None,
        operator: Operator | None = None,
        windows_every_tick: bool = False,
        head_stride: int = 0,
    ) -> None:
        self.scheduler = scheduler
        self.horizon = horizon
        self.windows_every_tick = windows_every_tick
        self.head_stride = stride_of("head_stride", head_stride, horizon)
        self.hold = hold
        self.head = head
        self.operator = operator
        self.boundary_callbacks: list[Callable[[int], None]] = []
        # run when an episode starts, before its first chunk is asked for (base weights are swapped here)
        self.episode_callbacks: list[Callable[[], None]] = []
        self._correction = np.zeros((horizon, 0), np.float32)

    def fault_stats(self) -> dict[str, int]:
        """The inference backend's fault counters (a worker process's ``worker_restarts``); {} for others."""
        stats = getattr(self.scheduler.backend, "fault_stats", None)
        return dict(stats()) if callable(stats) else {}

    def reset(self, observation: dict[str, np.ndarray], task: str) -> None:
        """Start an episode: run the episode callbacks, clear the plan and wait for the first base chunk."""
        for callback in self.episode_callbacks:
            callback()
        self.scheduler.reset()
        if self.operator is not None:
            self.operator.reset()
        self.scheduler.prime(observation, task)

    def decide(self, observation: dict[str, np.ndarray], task: str, tick: int) -> Decision:
        """The action for ``tick``."""
        chunk_index, chunk_step = divmod(tick, self.horizon)
        base = self.scheduler.step(observation, task, tick)
        starved = base is None
        hold = self.hold()
        base_action = hold if starved else base
        if chunk_step == 0:
            for callback in self.boundary_callbacks:
                callback(chunk_index)
        correct = tick % self.head_stride == 0  # at every boundary too: head_stride divides H
        window = None
        if correct or self.windows_every_tick:
            window, _ = self.scheduler.window(tick, self.horizon, fill=hold)
        if correct:
            if self.head is not None:
                self._correction = np.asarray(
                    self.head.correction(observation, self.scheduler.features, window), np.float32
                )
            else:
                self._correction = np.zeros_like(window)
        step = tick % self.head_stride  # ticks since the last correction, as chunk_step is since the boundary
        head_action = self._correction[step] if self._correction.size else np.zeros_like(base_action)
        policy_action = None if starved else base_action + head_action
        decision = Decision(
            action=policy_action,
            base_action=base_action,
            head_action=head_action,
            starved=starved,
            chunk_index=chunk_index,
            chunk_step=chunk_step,
            head_version=getattr(self.head, "version", 0),
            base_version=self.scheduler.version,
            features=self.scheduler.features,
            base_window=window,
        )
        if self.operator is not None:
            out = self.operator.step(observation, base_action + head_action, tick)
            decision.events = out.events
            if out.action is not None:
                decision.action = np.asarray(out.action, np.float32)
                decision.is_intervention = not out.hold
                decision.takeover_start = out.takeover_start and not out.hold
                decision.head_action = np.zeros_like(base_action)
            elif out.blend < 1.0 and policy_action is not None:
                anchor = hold if out.anchor is None else np.asarray(out.anchor, np.float32)
                decision.action = out.blend * policy_action + (1 - out.blend) * anchor
        return decision
