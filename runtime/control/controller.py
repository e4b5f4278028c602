"""Deciding each tick's action: base chunk, head, and the human.

Chunk boundaries fall every ``horizon`` (H) ticks of an episode. At a boundary the controller asks
the head for its correction of the base plan's next H ticks (zeros without a head) and runs the
boundary callbacks (weight swaps happen there). Every tick it combines the live base action with the
head's correction; an operator, if any, may take over and replace the action.

A *sampling head* (``head=vgps``: a head with ``num_samples`` and ``choose``) picks among the N base
samples the scheduler keeps beside its plan (``ChunkScheduler.samples``, one batched inference call per
request): when the samples cover the H-tick window, the chosen sample's window runs as the base for the
next ``head_stride`` ticks, open loop (the plan's later chunks do not splice into it), so the tick
records' ``base_action`` and the executed actions are the chosen sample's. When the head declines (no
critic yet, N = 1) or the samples do not cover the window, the base plan runs unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tandem.core.validate import stride_of
from tandem.runtime.control.scheduler import ChunkScheduler
from tandem.teleop.operator import Operator, OperatorOutput  # noqa: F401  (Operator: the controller's input)

log = logging.getLogger(__name__)


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


class SamplingHead(Head, Protocol):
    """A head that picks one of N base samples (V-GPS, ``tandem.policies.heads.vgps.VGPSHead``)."""

    num_samples: int

    def choose(self, observation: dict[str, np.ndarray], features: np.ndarray, samples: np.ndarray) -> int | None:
        """Index into ``samples`` (float32[N, H, A], the windows from this tick on) of the one to run, or None
        to run the base plan unchanged."""


def is_sampling_head(head: object) -> bool:
    """True for a head that picks among base samples (has ``choose`` and ``num_samples``)."""
    return callable(getattr(head, "choose", None)) and hasattr(head, "num_samples")


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
        self._sampling = is_sampling_head(head)
        self._committed: np.ndarray | None = None  # float32[H, A]: the chosen base sample's window (sampling head)
        self._committed_tick = 0
        self.sample_stats = {"chosen": 0, "declined": 0, "uncovered": 0}  # sampling head: boundaries by outcome

    def fault_stats(self) -> dict[str, int]:
        """The inference backend's fault counters (a worker process's ``worker_restarts``); {} for others."""
        stats = getattr(self.scheduler.backend, "fault_stats", None)
        return dict(stats()) if callable(stats) else {}

    def reset(self, observation: dict[str, np.ndarray], task: str) -> None:
        """Start an episode: run the episode callbacks, clear the plan and wait for the first base chunk."""
        for callback in self.episode_callbacks:
            callback()
        self.scheduler.reset()
        self._committed = None
        if self.operator is not None:
            self.operator.reset()
        self.scheduler.prime(observation, task)

    def decide(self, observation: dict[str, np.ndarray], task: str, tick: int) -> Decision:
        """The action for ``tick``."""
        chunk_index, chunk_step = divmod(tick, self.horizon)
        base = self.scheduler.step(observation, task, tick)
        hold = self.hold()
        if chunk_step == 0:
            for callback in self.boundary_callbacks:
                callback(chunk_index)
        correct = tick % self.head_stride == 0  # at every boundary too: head_stride divides H
        if correct and self._sampling:
            self._committed = self._choose_sample(observation, tick)
            self._committed_tick = tick
        if self._committed is not None and tick - self._committed_tick < self.head_stride:
            base = self._committed[tick - self._committed_tick].copy()  # the chosen sample runs open loop
        else:
            self._committed = None
        starved = base is None
        base_action = hold if starved else base
        window = None
        if correct or self.windows_every_tick:
            window = self._window(tick, hold)
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

    def _choose_sample(self, observation: dict[str, np.ndarray], tick: int) -> np.ndarray | None:
        """The sampling head's chosen window float32[H, A] from this tick on, or None (run the plan)."""
        samples = self.scheduler.samples
        i0 = tick - self.scheduler.plan_start
        if samples is None or i0 < 0 or i0 + self.horizon > samples.shape[1]:
            if not self.sample_stats["uncovered"]:
                log.warning("head=vgps: the base samples do not cover the %d-tick window at tick %d (%s); the base "
                            "plan runs unchanged there (use a base chunk of at least session.horizon ticks)",
                            self.horizon, tick, "no samples" if samples is None else f"{samples.shape[1] - i0} ticks left")
            self.sample_stats["uncovered"] += 1
            return None
        windows = samples[:, i0: i0 + self.horizon]
        index = self.head.choose(observation, self.scheduler.features, windows)  # type: ignore[union-attr]
        if index is None:
            self.sample_stats["declined"] += 1
            return None
        self.sample_stats["chosen"] += 1
        return np.ascontiguousarray(windows[int(index)], np.float32)

    def _window(self, tick: int, hold: np.ndarray) -> np.ndarray:
        """float32[H, A]: the base actions planned for ``tick .. tick+H-1``: the committed sample's remaining
        ticks (sampling head), then the scheduler's plan (ticks past it: ``hold``)."""
        if self._committed is None:
            window, _ = self.scheduler.window(tick, self.horizon, fill=hold)
            return window
        done = tick - self._committed_tick
        head = self._committed[done:]
        rest, _ = self.scheduler.window(tick + len(head), self.horizon - len(head), fill=hold)
        return np.concatenate([head, rest]) if len(rest) else head.copy()
