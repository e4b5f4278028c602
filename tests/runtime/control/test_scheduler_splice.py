"""Splice modes (naive, crossfade, rtc), the emulated delay, and what the controller logs.

The policies below write into each chunk which request made it (``100 * request number``) plus the
absolute tick each action is meant for, so every executed action names the chunk it came from.
"""

import numpy as np
import pytest

from tandem.core.errors import ConfigError
from tandem.policies.base import BasePolicy, Chunk
from tandem.policies.tiny_vla.rtc import DELAY_KEY, PREFIX_KEY
from tandem.runtime.config import compose_run
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend


class TaggedPolicy(BasePolicy):
    """actions[i] = 100 * k + (obs tick + i) for the k-th request; optionally honours RTC requests."""

    name = "tagged"

    def __init__(self, chunk_length=8, rtc=False):
        self.chunk_length, self.action_dim, self.rtc = chunk_length, 1, rtc
        self.requests: list[dict] = []

    def infer(self, observation, task):
        self.requests.append(observation)
        k = len(self.requests)
        t0 = float(observation["tick"][0])
        actions = (100.0 * k + t0 + np.arange(self.chunk_length, dtype=np.float32))[:, None]
        if self.rtc and PREFIX_KEY in observation:
            d = int(observation[DELAY_KEY][0])
            actions[:d] = observation[PREFIX_KEY][:d]
        return Chunk(actions=actions)


def obs(t):
    return {"tick": np.array([t], np.float32)}


def run(config, policy, ticks=40, lookahead=4):
    s = ChunkScheduler(InlineBackend(policy), config, lookahead=lookahead, synchronous=True)
    s.prime(obs(0), "")
    return s, [s.step(obs(t), "", t)[0] for t in range(ticks)]


def test_splice_mode_and_delay_are_validated():
    assert SchedulerConfig().splice == "crossfade", "cross-fade stays the default"
    for mode in ("naive", "crossfade", "rtc"):
        assert SchedulerConfig(splice=mode).splice == mode
    with pytest.raises(ConfigError, match="scheduler.splice"):
        SchedulerConfig(splice="rtcc")
    with pytest.raises(ConfigError, match="scheduler.sim_delay_ticks"):
        SchedulerConfig(sim_delay_ticks=-1)
    assert compose_run(["scheduler.splice=rtc", "scheduler.sim_delay_ticks=2"]).scheduler.splice == "rtc"
    with pytest.raises(ConfigError, match="did you mean 'naive'"):
        compose_run(["scheduler.splice=naiv"])


@pytest.mark.parametrize("delay", [1, 3])
def test_sim_delay_makes_a_chunk_available_d_ticks_after_its_observation(delay):
    policy = TaggedPolicy(8)
    s, got = run(SchedulerConfig(splice="naive", sim_delay_ticks=delay, margin_ticks=1), policy)
    request_ticks = [int(r["tick"][0]) for r in policy.requests[1:]]
    assert s.splice_ticks, "chunks were spliced"
    assert [t - delay for t in s.splice_ticks] == request_ticks[: len(s.splice_ticks)]
    assert s.delay_ticks == delay, "the measured delay is the emulated one"
    assert all(v % 100 == t for t, v in enumerate(got)), "every executed action belongs to its tick"
    assert s.stats.starved_ticks == 0


def tag(v, t):
    """The request number of the chunk(s) behind the executed action ``v`` at tick ``t`` (a float mid-fade)."""
    return (float(v) - t) / 100.0


def test_naive_switches_and_crossfade_blends_at_the_splice():
    s, naive = run(SchedulerConfig(splice="naive", sim_delay_ticks=2), TaggedPolicy(8))
    for t in s.splice_ticks:
        assert tag(naive[t], t).is_integer() and tag(naive[t], t) == tag(naive[t - 1], t - 1) + 1, "switched"
    s, fade = run(SchedulerConfig(splice="crossfade", blend_ticks=3, sim_delay_ticks=2), TaggedPolicy(16))
    t = s.splice_ticks[2]  # P = 16: 7 ticks between splices, so the old plan is not mid-fade
    old = tag(fade[t - 1], t - 1)
    assert [tag(fade[t + i], t + i) - old for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0]), "3-tick fade"


def test_rtc_requests_carry_the_committed_prefix_and_the_measured_delay():
    policy = TaggedPolicy(8, rtc=True)
    s, got = run(SchedulerConfig(splice="rtc", sim_delay_ticks=2, margin_ticks=1), policy, ticks=30)
    assert PREFIX_KEY not in policy.requests[0], "the first chunk has no prefix"
    late = policy.requests[3:]
    assert late and all(int(r[DELAY_KEY][0]) == 2 for r in late), "d is the measured delay"
    for r in late:
        t = int(r["tick"][0])
        prefix = r[PREFIX_KEY][:, 0]
        assert np.array_equal(prefix % 100, t + np.arange(len(prefix))), "the plan from the observation's tick on"
        assert len({v // 100 for v in prefix}) == 1 and 2 <= len(prefix) <= 2 + 1 + 4, "what is left of one chunk"
        if t + 2 <= len(got):
            assert np.array_equal(prefix[:2], got[t : t + 2]), "the frozen prefix is what ran"
    assert s.stats.rtc_requests >= len(late) and s.stats.rtc_fallbacks == 0
    for t in s.splice_ticks:
        assert tag(got[t], t).is_integer(), "an honoured RTC chunk is switched to, not cross-faded"


def test_rtc_with_a_policy_without_support_falls_back_to_crossfade():
    policy = TaggedPolicy(8, rtc=False)
    s, fade = run(SchedulerConfig(splice="rtc", blend_ticks=3, sim_delay_ticks=2), policy)
    checked = sum(1 for r in policy.requests if DELAY_KEY in r and int(r[DELAY_KEY][0]) > 0)
    merged = checked - (s._pending is not None)  # the last request may still be in flight
    assert merged > 0 and s.stats.rtc_fallbacks == merged, "every chunk that ignored its prefix is counted"
    t = s.splice_ticks[-2]
    assert not tag(fade[t], t).is_integer(), "and cross-faded"


def test_the_controller_logs_the_executed_base_actions_not_the_proposal():
    """Under delay the old chunk runs for the first d ticks; the decisions name what ran."""
    for mode in ("naive", "crossfade", "rtc"):
        policy = TaggedPolicy(8, rtc=False)
        s = ChunkScheduler(InlineBackend(policy), SchedulerConfig(splice=mode, sim_delay_ticks=3), lookahead=4,
                           synchronous=True)
        c = Controller(s, horizon=4, hold=lambda: np.zeros(1, np.float32))
        c.reset(obs(0), "")
        executed = []
        for t in range(30):
            decision = c.decide(obs(t), "", t)
            executed.append(float(decision.base_action[0]))
            assert np.array_equal(decision.action, decision.base_action), "no head: the action is the base action"
            assert decision.base_action[0] == s.plan[t - s.plan_start, 0], "the plan's (spliced) action"
        for r in policy.requests[1:]:
            t = int(r["tick"][0])
            k = policy.requests.index(r) + 1
            if t + 3 < 30:
                assert all(v // 100 != k for v in executed[t : t + 3]), f"{mode}: the proposal's first d ticks never ran"
