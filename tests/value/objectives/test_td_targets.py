"""Chunked TD targets against hand-computed values (tandem.value.objectives.targets)."""

import numpy as np
import pytest
import torch

from tandem.policies.heads.critic import ChunkedCritic, CriticConfig
from tandem.policies.heads.select import best_of_candidates, make_selector, select_best
from tandem.value.objectives.targets import (
    bootstrap_terms,
    chunk_return,
    critic_target,
    shaped_reward,
    td_target,
)

G = 0.5  # gamma chosen so the powers are exact in binary


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def b(x):
    return torch.tensor(x, dtype=torch.bool)


def test_full_chunk_bootstraps_with_gamma_to_the_h():
    r = t([[1.0, 2.0, 4.0]])
    y, w = td_target(r, b([[1, 1, 1]]), b([0]), b([1]), t([8.0]), G)
    # R = 1 + 0.5*2 + 0.25*4 = 3; bootstrap 0.5^3 * 8 = 1
    assert y.tolist() == [4.0] and w.tolist() == [1.0]


def test_terminal_never_bootstraps_full_or_partial():
    r = t([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    valid = b([[1, 1, 1], [1, 1, 0]])
    y, w = td_target(r, valid, b([1, 1]), b([0, 0]), t([100.0, 100.0]), G)
    # full terminal: R = 3; partial terminal: tick 2 is past the end -> R = 1 + 1 = 2
    assert y.tolist() == [3.0, 2.0] and w.tolist() == [1.0, 1.0]


def test_failed_terminal_adds_the_failure_value_after_its_valid_ticks():
    r = t([[-1.0, -1.0, -1.0]] * 4)
    valid = b([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 1]])
    done, failed = b([1, 1, 1, 0]), b([1, 1, 0, 1])  # the last row: "failed" without done counts for nothing
    y, w = td_target(r, valid, done, b([0, 0, 0, 1]), t([0.0, 0.0, 0.0, -4.0]), G, failed, failure_value=-8.0)
    # full failure: R = -1.75, + 0.5^3 * -8 = -1; partial (h = 2): R = -1.5, + 0.25 * -8 = -2;
    # success terminal: R = -1.5; non-terminal: R = -1.75 + 0.125 * -4
    assert y.tolist() == [-2.75, -3.5, -1.5, -2.25] and w.tolist() == [1.0] * 4
    y0, _ = td_target(r, valid, done, b([0, 0, 0, 1]), t([0.0, 0.0, 0.0, -4.0]), G, failed)
    assert y0.tolist() == [-1.75, -1.5, -1.5, -2.25]  # failure_value 0: a failure ends the returns like a success


def test_time_limit_bootstraps_from_the_truncation_state_with_gamma_to_the_valid_ticks():
    r = t([[1.0, 2.0, 4.0]])
    valid = b([[1, 1, 0]])
    y, w = td_target(r, valid, b([0]), b([1]), t([8.0]), G)
    # h = 2: R = 2, bootstrap 0.25 * 8 = 2
    assert y.tolist() == [4.0] and w.tolist() == [1.0]


def test_time_limit_without_a_state_is_excluded_not_treated_as_terminal():
    r = t([[1.0, 2.0, 4.0]])
    y, w = td_target(r, b([[1, 1, 0]]), b([0]), b([0]), t([float("nan")]), G)
    assert w.tolist() == [0.0]
    assert torch.isfinite(y).all()  # the missing next value never leaks in, even as NaN


def test_bootstrap_terms_table():
    valid = b([[1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 0, 0]])
    done = b([0, 1, 0, 1])
    next_valid = b([1, 0, 1, 0])
    disc, w = bootstrap_terms(valid, done, next_valid, G)
    assert disc.tolist() == [0.125, 0.0, 0.5, 0.0]
    assert w.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_takeover_without_and_with_the_rlif_penalty():
    r = t([[1.0, 2.0, 4.0]])
    onset = b([[0, 1, 0]])
    valid = b([[1, 1, 1]])
    plain = chunk_return(shaped_reward(r, onset), valid, G)
    assert plain.tolist() == [3.0]  # interventions are plain data by default (ALOE)
    rlif = chunk_return(shaped_reward(r, onset, rlif_penalty=1.0), valid, G)
    assert rlif.tolist() == [2.5]  # -1 at the onset tick, discounted by 0.5
    pure = chunk_return(shaped_reward(r, onset, reward_scale=0.0, rlif_penalty=2.0), valid, G)
    assert pure.tolist() == [-1.0]  # pure RLIF, scale 2
    # an onset past the episode's end does not count
    late = chunk_return(shaped_reward(r, b([[0, 0, 1]]), rlif_penalty=1.0), b([[1, 1, 0]]), G)
    assert late.tolist() == [2.0]


def _critic(**kw):
    cfg = dict(state_dim=3, feature_dim=2, horizon=3, action_dim=2, hidden=(16,), gamma=G, seed=0)
    cfg.update(kw)
    return ChunkedCritic(CriticConfig(**cfg))


def test_min_pair_uses_a_seeded_random_pair():
    critic = _critic(ensemble_size=4, aggregation="min_pair", pair_size=2)
    q = t([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0], [4.0, 2.0]])  # [M=4, B=2]
    gen = torch.Generator().manual_seed(7)
    ref = torch.Generator().manual_seed(7)
    seen = set()
    for _ in range(20):
        out = critic.aggregate(q, gen)
        idx = torch.randperm(4, generator=ref)[:2]
        assert out.tolist() == q[idx].min(0).values.tolist()
        seen.add(tuple(out.tolist()))
        assert (out >= q.min(0).values).all() and (out <= q.max(0).values).all()
    assert len(seen) > 1


def test_min_pair_with_two_members_is_the_min_and_lcb_formula():
    q = t([[1.0, 6.0, 2.0], [3.0, 2.0, 2.0]])
    assert _critic().aggregate(q).tolist() == [1.0, 2.0, 2.0]
    lcb = _critic(aggregation="lcb", kappa=1.0).aggregate(q)
    assert lcb.tolist() == [1.0, 2.0, 2.0]  # M = 2, population std: mean - std = min
    q3 = t([[0.0], [3.0], [6.0]])
    lcb3 = _critic(ensemble_size=3, aggregation="lcb", kappa=0.5).aggregate(q3)
    assert lcb3.item() == pytest.approx(3.0 - 0.5 * np.sqrt(6.0))
    assert _critic(ensemble_size=3, aggregation="mean").aggregate(q3).item() == 3.0
    assert _critic(ensemble_size=3, aggregation="min").aggregate(q3).item() == 0.0


def _batch(bsz=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(bsz, 3, dtype=torch.bool)
    valid[1, 2] = False
    return {
        "state": torch.randn(bsz, 3, generator=g), "features": torch.randn(bsz, 2, generator=g),
        "base": torch.rand(bsz, 3, 2, generator=g), "executed": torch.rand(bsz, 3, 2, generator=g),
        "reward": torch.randn(bsz, 3, generator=g), "valid": valid,
        "done": torch.tensor([0, 1, 0, 0, 0], dtype=torch.bool)[:bsz],
        "truncated": torch.zeros(bsz, dtype=torch.bool),
        "takeover_start": torch.zeros(bsz, 3, dtype=torch.bool),
        "next_state": torch.randn(bsz, 3, generator=g), "next_features": torch.randn(bsz, 2, generator=g),
        "next_base": torch.rand(bsz, 3, 2, generator=g),
        "next_valid": torch.tensor([1, 0, 1, 1, 1], dtype=torch.bool)[:bsz],
    }


def test_critic_target_uses_the_target_network_and_the_next_action():
    critic = _critic()
    with torch.no_grad():  # make online and target differ
        for p in critic.online.parameters():
            p.add_(0.5)
    batch = _batch()
    shift = lambda s, f, a: a + 0.25  # noqa: E731  a' = next base + a "head"
    y, w = critic_target(critic, batch, shift)
    with torch.no_grad():
        q_next = critic.q_values(batch["next_state"], batch["next_features"], batch["next_base"] + 0.25, target=True)
    next_q = q_next.min(0).values
    g = G ** torch.arange(3.0)
    r = (batch["reward"] * batch["valid"] * g).sum(-1)
    expected = r + G**3 * next_q * torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(y, expected)
    assert w.tolist() == [1.0] * 5


def test_select_best_picks_the_argmax_and_ties_go_to_the_base():
    cands = torch.arange(2 * 3 * 3 * 2, dtype=torch.float32).reshape(2, 3, 3, 2)
    best, idx = select_best(t([[0.1, 0.9, 0.5], [0.2, 0.2, 0.2]]), cands)
    assert idx.tolist() == [1, 0]
    torch.testing.assert_close(best, torch.stack([cands[0, 1], cands[1, 0]]))


def test_best_of_candidates_is_the_argmax_of_the_pessimistic_q_for_acting_and_targets():
    critic = _critic()
    with torch.no_grad():
        for p in critic.online.parameters():
            p.mul_(1.5)
    batch = _batch()
    cands = torch.rand(5, 9, 3, 2, generator=torch.Generator().manual_seed(3))
    for target in (False, True):
        best, idx, scores = best_of_candidates(critic, batch["state"], batch["features"], cands, target=target)
        with torch.no_grad():
            q = torch.stack([critic.q_values(batch["state"], batch["features"], cands[:, n], target=target).min(0).values
                             for n in range(9)], dim=1)
        torch.testing.assert_close(scores, q)
        assert idx.tolist() == q.argmax(1).tolist()
        torch.testing.assert_close(best, cands[torch.arange(5), q.argmax(1)])
    # the robot-side selector runs the same operator with the online critic, one state at a time
    selector = make_selector(critic)
    _, idx_online, _ = best_of_candidates(critic, batch["state"], batch["features"], cands)
    for i in range(5):
        pick = selector(batch["state"][i].numpy(), batch["features"][i].numpy(), cands[i].numpy())
        assert pick == idx_online[i].item()
