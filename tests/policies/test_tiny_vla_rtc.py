"""Real-time chunking for the tiny VLA: the mask, the guidance weight, the request, guided inpainting.

The guidance tests use the shipped checkpoint (checkpoints/tiny_vla): a trained velocity field, whose
inpainting behaviour is what the runtime relies on.
"""

import numpy as np
import pytest
import torch

from tandem.policies.tiny_vla.policy import TinyVLAPolicy, TinyVLAPolicyConfig
from tandem.policies.tiny_vla.rtc import (
    DELAY_KEY,
    PREFIX_KEY,
    guidance_weight,
    make_request,
    prefix_weights,
    read_request,
)
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend

IMG = "observation.images.corner"


def test_prefix_weights_freeze_d_then_decay_exponentially_to_the_end_of_the_prefix():
    w = prefix_weights(delay=3, end=11, length=16)
    assert w.shape == (16,) and w.dtype == np.float32
    assert (w[:3] == 1.0).all(), "the first d steps are frozen"
    soft = w[3:11]
    assert (soft < 1).all() and (soft > 0).all() and (np.diff(soft) < 0).all(), "a strict decay inside (0, 1)"
    assert (w[11:] == 0).all(), "no guidance past H - s"
    # exponential, not linear: r (e^r - 1) / (e - 1) lies under the linear ramp r
    r = (11 - np.arange(3, 11)) / (11 - 3 + 1)
    assert np.allclose(soft, r * np.expm1(r) / (np.e - 1), atol=1e-6) and (soft < r).all()
    assert (prefix_weights(0, 0, 8) == 0).all()
    assert (prefix_weights(20, 8, 8) == 1).all(), "d is clipped to the prefix"


def test_guidance_weight_is_capped_at_beta():
    assert guidance_weight(0.0, 5.0) == 5.0
    assert guidance_weight(0.1, 5.0) == 5.0  # (0.9/0.1)(0.01+0.81)/0.81 = 9.1, capped
    assert guidance_weight(0.5, 5.0) == pytest.approx(2.0)  # (0.5/0.5)(0.25+0.25)/0.25
    assert guidance_weight(0.9, 20.0) == pytest.approx(0.1 / 0.9 * (0.81 + 0.01) / 0.01)  # 9.1, under 20
    assert guidance_weight(0.9, 5.0) == 5.0
    assert guidance_weight(0.5, 1.0) == 1.0


def test_read_request_pads_and_ignores_requests_without_a_usable_prefix():
    obs = {"observation.state": np.zeros(39, np.float32)}
    prefix, w, d = read_request(obs, 6, 2)
    assert d == 0 and not w.any() and prefix.shape == (6, 2)
    p = np.arange(8, dtype=np.float32).reshape(4, 2)
    req = make_request(obs, p, 2)
    assert PREFIX_KEY not in obs and set(req) == {"observation.state", PREFIX_KEY, DELAY_KEY}
    prefix, w, d = read_request(req, 6, 2)
    assert d == 2 and np.array_equal(prefix[:4], p) and np.array_equal(prefix[4:], [p[-1], p[-1]])
    assert np.allclose(w, prefix_weights(2, 4, 6))
    assert read_request(make_request(obs, p, 9), 6, 2)[2] == 4, "d is clipped to the prefix"
    assert not read_request(make_request(obs, np.zeros((4, 3), np.float32), 2), 6, 2)[1].any(), "wrong A: ignored"


@pytest.fixture(scope="module")
def policy():
    return TinyVLAPolicy(TinyVLAPolicyConfig(device="cpu", torch_threads=1))


def observation(seed=0):
    rng = np.random.default_rng(seed)
    return {"observation.state": (0.1 * rng.normal(size=39)).astype(np.float32),
            IMG: rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)}


def features(policy, n=1, seed=0):
    obs = observation(seed)
    with torch.inference_mode():
        images, state = policy._batch([obs] * n)
        return policy.model.features(images, state, policy._text(["push the puck to the goal"] * n))


def test_zero_weights_sample_exactly_like_plain_sampling(policy):
    model, f = policy.model, features(policy, 2)
    plain = model.sample(f, 10, generator=torch.Generator().manual_seed(3))
    p, a = model.cfg.chunk_length, model.cfg.action_dim
    guided = model.sample_guided(f, 10, prefix=torch.ones(2, p, a), weights=torch.zeros(2, p),
                                 delay=torch.zeros(2, dtype=torch.long), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(plain, guided, atol=1e-5)


def test_guidance_pulls_the_chunk_to_the_prefix_and_the_frozen_steps_equal_it(policy):
    model, n = policy.model, 16
    f = features(policy, n)
    p, a, d, end = model.cfg.chunk_length, model.cfg.action_dim, 3, 11
    g = torch.Generator().manual_seed(0)
    old = model.sample(features(policy, 1, seed=1), 10, generator=g).clamp(-1, 1)[0]
    prefix = torch.cat([old[5:], old[-1:].repeat(5, 1)])  # what is left of the old chunk after s = 5, padded
    w = torch.from_numpy(prefix_weights(d, end, p))
    kw = dict(prefix=prefix[None].repeat(n, 1, 1), weights=w[None].repeat(n, 1), delay=torch.full((n,), d))
    free = model.sample(f, 10, generator=torch.Generator().manual_seed(1))
    soft = model.sample_guided(f, 10, generator=torch.Generator().manual_seed(1), hard_prefix=False, **kw)
    hard = model.sample_guided(f, 10, generator=torch.Generator().manual_seed(1), **kw)

    def gap(x):  # mean over samples of max |x - prefix| over elements, per step
        return (x - prefix).abs().amax(-1).mean(0)

    assert torch.allclose(hard[:, :d], prefix[:d].expand(n, d, a), atol=1e-5), "the frozen steps are the prefix"
    assert (gap(soft)[:d] < 0.5 * gap(free)[:d]).all(), "guidance alone brings the frozen steps to the prefix"
    assert gap(soft)[d] < 0.6 * gap(free)[d], "and the first free step (the splice) close to it"
    assert gap(hard)[d:end].mean() < 0.85 * gap(free)[d:end].mean(), "the soft region leans to the prefix"


def test_policy_honours_an_rtc_request_and_plain_requests_are_unchanged(policy):
    obs = observation(2)
    policy.reseed(5)
    a = policy.infer(obs, "push the puck to the goal").actions
    policy.reseed(5)
    b = policy.infer(obs, "push the puck to the goal").actions
    assert np.array_equal(a, b), "reseed restarts the noise"
    prefix = np.linspace(-0.5, 0.5, 40, dtype=np.float32).reshape(10, 4)
    chunk = policy.infer(make_request(obs, prefix, 4), "push the puck to the goal")
    assert chunk.actions.shape == (16, 4)
    assert np.allclose(chunk.actions[:4], prefix[:4], atol=1e-6)
    mixed = policy.infer_batch([obs, make_request(obs, prefix, 2)], ["push the puck to the goal"] * 2)
    assert np.allclose(mixed[1].actions[:2], prefix[:2], atol=1e-6)
    assert not np.allclose(mixed[0].actions[:2], prefix[:2], atol=1e-2), "the plain sample in the batch is free"


def splice_jerk(scheduler_config, policy, ticks=120):
    """Mean over splices of max |a_t - a_{t-1}| at the splice tick, on a fixed observation stream."""
    policy.reseed(0)
    s = ChunkScheduler(InlineBackend(policy), scheduler_config, lookahead=6, synchronous=True)
    obs = observation(4)
    s.prime(obs, "push the puck to the goal")
    actions = np.stack([s.step(obs, "push the puck to the goal", t) for t in range(ticks)])
    jumps = [np.abs(actions[t] - actions[t - 1]).max() for t in s.splice_ticks if t >= 1]
    assert len(jumps) >= 10 and s.stats.starved_ticks == 0
    return float(np.mean(jumps)), s


@pytest.mark.parametrize("delay", [1, 2])
def test_rtc_splices_are_smoother_than_naive_switching(policy, delay):
    naive, _ = splice_jerk(SchedulerConfig(splice="naive", sim_delay_ticks=delay), policy)
    rtc, s = splice_jerk(SchedulerConfig(splice="rtc", sim_delay_ticks=delay), policy)
    assert s.stats.rtc_requests > 0 and s.stats.rtc_fallbacks == 0, "the tiny VLA honours every RTC request"
    assert rtc < 0.85 * naive, (delay, rtc, naive)  # measured: 0.74 (d=1, 2), 0.83 at d=3; seeded
