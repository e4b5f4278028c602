"""Chunk scheduler: alignment, early requests, blending, starvation, stale replies.

The policy below writes into each chunk the absolute tick each action is meant for, so an aligned
plan returns action == tick.
"""

import time

import numpy as np

from tandem.policies.base import BasePolicy, Chunk
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend, ThreadBackend


class TickPolicy(BasePolicy):
    name = "tick"

    def __init__(self, chunk_length=8, delay_s=0.0):
        self.chunk_length, self.action_dim, self.delay_s = chunk_length, 1, delay_s

    def infer(self, observation, task):
        if self.delay_s:
            time.sleep(self.delay_s)
        t0 = float(observation["tick"][0])
        return Chunk(actions=(t0 + np.arange(self.chunk_length, dtype=np.float32))[:, None])


def obs(t):
    return {"tick": np.array([t], np.float32)}


def test_inline_backend_plan_is_aligned_and_refilled():
    s = ChunkScheduler(InlineBackend(TickPolicy(8)), SchedulerConfig(blend_ticks=0, margin_ticks=1), lookahead=0)
    s.prime(obs(0), "")
    for t in range(40):
        a = s.step(obs(t), "", t)
        assert a is not None and a[0] == t
    assert s.stats.starved_ticks == 0
    assert s.stats.requests >= 40 // 8


def test_slow_policy_arrivals_skip_past_steps_and_stay_aligned():
    policy = TickPolicy(chunk_length=12, delay_s=0.03)
    backend = ThreadBackend(policy)
    try:
        s = ChunkScheduler(backend, SchedulerConfig(blend_ticks=0, margin_ticks=2), lookahead=0)
        s.prime(obs(0), "")
        got = []
        for t in range(60):
            a = s.step(obs(t), "", t)
            got.append(None if a is None else a[0])
            time.sleep(0.01)
        planned = [(t, v) for t, v in enumerate(got) if v is not None]
        assert all(v == t for t, v in planned), "every executed action belongs to its tick"
        assert s.stats.skipped_steps > 0, "late chunks have their past steps skipped"
        assert s.delay_ticks >= 2
    finally:
        backend.close()


def test_starvation_is_counted_not_repeated():
    policy = TickPolicy(chunk_length=2, delay_s=0.05)
    backend = ThreadBackend(policy)
    try:
        s = ChunkScheduler(backend, SchedulerConfig(blend_ticks=0, margin_ticks=0), lookahead=0)
        s.prime(obs(0), "")
        results = []
        for t in range(30):
            results.append(s.step(obs(t), "", t))
            time.sleep(0.01)
        assert s.stats.starved_ticks > 0
        assert s.stats.starved_ticks == sum(r is None for r in results)
        values = [r[0] for r in results if r is not None]
        assert len(values) == len(set(values)), "no planned action is ever repeated"
    finally:
        backend.close()


def test_stale_reply_after_reset_is_dropped():
    backend = ThreadBackend(TickPolicy(4, delay_s=0.05))
    try:
        s = ChunkScheduler(backend, SchedulerConfig(), lookahead=0)
        s._submit(obs(0), "", tick=0)
        time.sleep(0.02)  # the worker has started on it
        s.reset()  # new episode while the request is in flight
        s.prime(obs(100), "")  # waits for its own reply, dropping the old one
        assert s.action_at(0)[0] == 100.0
        assert s.stats.stale_dropped == 1
    finally:
        backend.close()


def test_blend_cross_fades_overlap():
    s = ChunkScheduler(InlineBackend(TickPolicy(10)), SchedulerConfig(blend_ticks=3), lookahead=0)
    s.prime(obs(0), "")
    old = s.plan.copy()
    new = Chunk(actions=np.full((10, 1), 50.0, np.float32))
    s._merge(new, obs_tick=2, tick=4)
    # tick 4 is the first planned tick; weights 1/4, 2/4, 3/4 then fully new
    assert s.plan_start == 4
    assert np.allclose(s.plan[:4, 0], [0.75 * old[4, 0] + 12.5, 0.5 * old[5, 0] + 25, 0.25 * old[6, 0] + 37.5, 50])
    assert s.stats.skipped_steps == 2


def test_window_fills_unplanned_ticks_with_hold():
    s = ChunkScheduler(InlineBackend(TickPolicy(3)), SchedulerConfig(), lookahead=0)
    s.prime(obs(0), "")
    w, n = s.window(1, 5, fill=np.array([-1.0], np.float32))
    assert n == 2
    assert w[:, 0].tolist() == [1.0, 2.0, -1.0, -1.0, -1.0]
