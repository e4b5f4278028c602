"""The controller's head calls: once per chunk, or every ``head_stride`` ticks (receding horizon)."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.hardware.features import STATE_KEY, Feature
from tandem.policies.base import BasePolicy, Chunk
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend

H, A = 5, 2


class TickPolicy(BasePolicy):
    """Plans ``tick, tick + 1, ...`` for a chunk computed at ``tick`` (the state holds the tick)."""

    name = "tick"
    chunk_length = 8
    action_dim = A
    action_feature = Feature("float32", (A,))

    def infer(self, observation: dict[str, np.ndarray], task: str) -> Chunk:
        t0 = float(observation[STATE_KEY][0])
        return Chunk(actions=np.repeat((t0 + np.arange(self.chunk_length, dtype=np.float32))[:, None], A, axis=1))


class CallLog:
    """A head whose correction for a call at tick c is ``c + 0.01 k`` on the call's k-th tick."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, np.ndarray]] = []

    def correction(self, observation: dict[str, np.ndarray], features: np.ndarray, base: np.ndarray) -> np.ndarray:
        c = int(observation[STATE_KEY][0])
        self.calls.append((c, base.copy()))
        return np.repeat((c + 0.01 * np.arange(H, dtype=np.float32))[:, None], A, axis=1)


def run(ticks: int, **kwargs) -> tuple[CallLog, list]:
    head = CallLog()
    scheduler = ChunkScheduler(InlineBackend(TickPolicy()), SchedulerConfig(), lookahead=H, synchronous=True)
    ctrl = Controller(scheduler, H, hold=lambda: np.zeros(A, np.float32), head=head, **kwargs)
    ctrl.reset({STATE_KEY: np.zeros(1, np.float32)}, "task")
    decisions = [ctrl.decide({STATE_KEY: np.array([t], np.float32)}, "task", t) for t in range(ticks)]
    return head, decisions


def test_the_head_corrects_once_per_chunk_by_default():
    head, decisions = run(12)
    assert [c for c, _ in head.calls] == [0, 5, 10]
    for t, d in enumerate(decisions):
        c = t - t % H
        np.testing.assert_allclose(d.head_action, c + 0.01 * (t - c))  # the boundary's correction, tick by tick
        assert (d.base_window is not None) == (t % H == 0)
    for c, window in head.calls:  # what the head saw is the plan for its H ticks
        np.testing.assert_allclose(window[:, 0], c + np.arange(H))


def test_head_stride_1_corrects_the_plan_at_every_tick_and_runs_the_first_step():
    head, decisions = run(12, head_stride=1)
    assert [c for c, _ in head.calls] == list(range(12))
    for t, d in enumerate(decisions):
        np.testing.assert_allclose(d.head_action, t)  # the first tick of this tick's correction
        np.testing.assert_allclose(d.base_window[:, 0], t + np.arange(H))
        np.testing.assert_allclose(d.base_action, t)


def test_windows_every_tick_without_more_head_calls():
    head, decisions = run(7, windows_every_tick=True)
    assert [c for c, _ in head.calls] == [0, 5]
    assert all(d.base_window is not None and d.base_window[0, 0] == t for t, d in enumerate(decisions))


def test_a_head_stride_that_does_not_divide_the_horizon_is_refused():
    with pytest.raises(ValueError, match="must divide the horizon"):
        run(1, head_stride=2)
