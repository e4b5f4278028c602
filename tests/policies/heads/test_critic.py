"""The chunked critic ensemble (tandem.policies.heads.critic): shapes, vectorisation, Polyak, weights, learning."""

import numpy as np
import pytest
import torch

from tandem.core.errors import ConfigError
from tandem.policies.heads.critic import ChunkedCritic, CriticConfig
from tandem.value.objectives.critic import CriticObjective, CriticObjectiveConfig
from tandem.value.objectives.targets import critic_target

S, F, H, A = 4, 2, 3, 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(**kw):
    cfg = dict(state_dim=S, feature_dim=F, horizon=H, action_dim=A, hidden=(32, 32), seed=0)
    cfg.update(kw)
    return ChunkedCritic(CriticConfig(**cfg))


def inputs(bsz=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(bsz, S, generator=g), torch.randn(bsz, F, generator=g), torch.rand(bsz, H, A, generator=g)


def test_shapes_and_candidate_broadcast():
    critic = make(ensemble_size=10)
    s, f, a = inputs()
    q = critic.q_values(s, f, a)
    assert q.shape == (10, 6)
    cands = torch.rand(6, 4, H, A)
    qn = critic.q_values(s, f, cands)
    assert qn.shape == (10, 6, 4)
    torch.testing.assert_close(qn[:, :, 2], critic.q_values(s, f, cands[:, 2]))
    assert critic.q_pess(s, f, cands).shape == (6, 4)
    assert not torch.allclose(q[0], q[1])  # members are initialised independently


def test_vectorised_ensemble_matches_a_per_member_network():
    critic = make(ensemble_size=3)
    s, f, a = inputs()
    x = torch.cat([s, f, a.flatten(1)], 1)
    net = critic.online
    for m in range(3):
        h = x
        for i in range(3):
            h = h @ net.weights[i][m] + net.biases[i][m]
            if i < 2:
                h = torch.nn.functional.layer_norm(h, (32,), net.ln_weights[i][m, 0], net.ln_biases[i][m, 0])
                h = torch.relu(h)
        torch.testing.assert_close(critic.q_values(s, f, a)[m], h[:, 0])


def test_features_may_be_absent_and_float16():
    critic = make(feature_dim=0)
    s, _, a = inputs()
    assert critic.q_values(s, torch.zeros(6, 0), a).shape == (2, 6)
    critic = make()
    s, f, a = inputs()
    torch.testing.assert_close(critic.q_values(s, f.half(), a), critic.q_values(s, f.half().float(), a))


def test_polyak_update_math():
    critic = make(tau=0.1)
    old_target = [p.clone() for p in critic.target.parameters()]
    with torch.no_grad():
        for p in critic.online.parameters():
            p.add_(1.0)
    online = [p.clone() for p in critic.online.parameters()]
    critic.polyak_update()
    for t, o, n in zip(critic.target.parameters(), old_target, online, strict=True):
        torch.testing.assert_close(t, 0.9 * o + 0.1 * n)
    critic.polyak_update(0.5)
    critic.hard_update()
    for t, n in zip(critic.target.parameters(), online, strict=True):
        torch.testing.assert_close(t, n)
    assert all(not p.requires_grad for p in critic.target.parameters())


def test_frozen_blocks_critic_gradients_but_not_the_input():
    critic = make()
    s, f, a = inputs()
    a.requires_grad_(True)
    with critic.frozen():
        critic.q_pess(s, f, a).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.online.parameters())
    assert all(p.requires_grad for p in critic.online.parameters())


def test_weights_roundtrip_and_refusals():
    src, dst = make(seed=1), make(seed=2)
    s, f, a = inputs()
    assert not torch.allclose(src.q_values(s, f, a), dst.q_values(s, f, a))
    w = src.weights()
    assert all(v.dtype == np.float32 for v in w.values())
    assert set(w) == set(src.schema()["params"])
    dst.load_weights(w, version=7)
    assert dst.version == 7
    torch.testing.assert_close(src.q_values(s, f, a), dst.q_values(s, f, a))
    torch.testing.assert_close(dst.q_values(s, f, a, target=True), dst.q_values(s, f, a))
    bad = dict(w)
    bad["weights.0"] = np.full_like(bad["weights.0"], np.nan)
    with pytest.raises(ValueError, match="non-finite"):
        dst.load_weights(bad, 8)
    with pytest.raises(ValueError, match="missing"):
        dst.load_weights({k: v for k, v in w.items() if k != "biases.0"}, 8)
    with pytest.raises(ValueError, match="expected"):
        make(hidden=(16, 32)).load_weights(w, 8)
    assert dst.version == 7


def test_robot_score_matches_q_pess():
    critic = make()
    s, f, _ = inputs(1)
    cands = torch.rand(1, 9, H, A)
    np.testing.assert_allclose(critic.score(s[0].numpy(), f[0].numpy(), cands[0].numpy()),
                               critic.q_pess(s, f, cands)[0].detach().numpy(), rtol=1e-6)


def test_hl_gauss_head_values_stay_in_the_support():
    critic = make(loss="hl_gauss", bins=21, v_min=-2.0, v_max=3.0)
    s, f, a = inputs()
    assert critic.q_outputs(s, f, a).shape == (2, 6, 21)
    q = critic.q_values(s, f, a)
    assert (q >= -2.0).all() and (q <= 3.0).all()


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="aggregation"):
        CriticConfig(aggregation="minimum")
    with pytest.raises(ConfigError, match="loss"):
        CriticConfig(loss="huber")
    with pytest.raises(ConfigError, match="pair_size"):
        CriticConfig(ensemble_size=2, pair_size=3)
    with pytest.raises(ConfigError, match="gamma"):
        CriticConfig(gamma=1.5)
    assert CriticConfig(hidden=[8, 8]).hidden == (8, 8)


# ---- learning on a tiny synthetic chunk MDP ---------------------------------------------------------
#
# s ~ U(-1, 1)^S, chunks a ~ U(-1, 1)^{H x A} (data and next base alike), per-tick reward
# r_k = -mean_j (a_kj - tanh(W s)_j)^2, a terminal with probability p in every chunk, otherwise the next
# state is drawn afresh. For the data policy the true chunk value is known in closed form:
#   Q(s, a) = R(s, a) + gamma^H (1 - p) c,   c = E[R] / (1 - gamma^H (1 - p)).


def _mdp(n, gen, w, p_done=0.2, gamma=0.9):
    s = torch.rand(n, S, generator=gen) * 2 - 1
    f = torch.randn(n, F, generator=gen)
    a = torch.rand(n, H, A, generator=gen) * 2 - 1
    goal = torch.tanh(s @ w)  # [n, A]
    r = -((a - goal.unsqueeze(1)) ** 2).mean(-1)  # [n, H]
    done = torch.rand(n, generator=gen) < p_done
    batch = {
        "state": s, "features": f, "base": a, "executed": a, "reward": r,
        "valid": torch.ones(n, H, dtype=torch.bool), "done": done, "truncated": torch.zeros(n, dtype=torch.bool),
        "takeover_start": torch.zeros(n, H, dtype=torch.bool),
        "next_state": torch.rand(n, S, generator=gen) * 2 - 1, "next_features": torch.randn(n, F, generator=gen),
        "next_base": torch.rand(n, H, A, generator=gen) * 2 - 1, "next_valid": ~done,
    }
    disc = gamma ** torch.arange(H, dtype=torch.float32)
    ret = (r * disc).sum(-1)
    return batch, ret


@pytest.mark.parametrize("loss", ["mse", "hl_gauss"])
def test_critic_learns_a_synthetic_chunk_mdp(loss):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(S, A, generator=gen)
    gamma, p_done = 0.8, 0.5
    data, _ = _mdp(4096, gen, w, p_done, gamma)
    test, test_ret = _mdp(512, gen, w, p_done, gamma)
    # E[R] under the data policy, by Monte Carlo on a large sample, gives the closed-form value
    _, big_ret = _mdp(20000, gen, w, p_done, gamma)
    c = big_ret.mean() / (1 - gamma**H * (1 - p_done))
    true_q = test_ret + gamma**H * (1 - p_done) * c

    critic = make(hidden=(64, 64), gamma=gamma, tau=0.05, lr=1e-3, loss=loss, bins=41, v_min=-6.0, v_max=1.0)
    obj = CriticObjective(critic, CriticObjectiveConfig(seed=0))

    def errors():
        """(mean (Q - Q_true)^2, held-out TD error mean (Q - y)^2 against the current target)."""
        with torch.no_grad():
            q = critic.q_values(test["state"], test["features"], test["executed"])
            y, wt = critic_target(critic, test)
        return float(((q.mean(0) - true_q) ** 2).mean()), float((((q - y) ** 2) * wt).mean())

    q_before, td_before = errors()
    for _ in range(300):
        idx = torch.randint(0, 4096, (128,), generator=gen)
        last = obj.update({k: v[idx] for k, v in data.items()})
    q_after, td_after = errors()
    assert td_after < 0.7 * td_before, (td_before, td_after)
    assert q_after < 0.5 * q_before and q_after < 0.35 * float(true_q.var()), (q_before, q_after, float(true_q.var()))
    assert np.isfinite(last["critic/loss"])


@pytest.mark.parametrize("candidates", [False, True])
def test_min_pair_scores_only_the_drawn_members_and_matches_the_full_aggregate(candidates: bool) -> None:
    """q_pess with "min_pair" evaluates just the drawn pair; the value equals aggregating all ten members
    with the same draw (same generator state), and gradients reach only the pair's parameters."""
    cfg = CriticConfig(state_dim=5, feature_dim=3, horizon=4, action_dim=2, ensemble_size=10, hidden=(16, 16))
    critic = ChunkedCritic(cfg)
    g = torch.Generator().manual_seed(0)
    s, f = torch.randn(6, 5, generator=g), torch.randn(6, 3, generator=g)
    chunk = torch.randn(6, 7, 4, 2, generator=g) if candidates else torch.randn(6, 4, 2, generator=g)
    fast = critic.q_pess(s, f, chunk, generator=torch.Generator().manual_seed(7))
    full = critic.aggregate(critic.q_values(s, f, chunk), torch.Generator().manual_seed(7))
    torch.testing.assert_close(fast, full)
    pair = critic.pair_members(torch.Generator().manual_seed(7))
    assert pair is not None and pair.numel() == 2
    fast.sum().backward()
    grad = critic.online.weights[0].grad.abs().flatten(1).sum(1)
    touched = set(torch.nonzero(grad).flatten().tolist())
    assert touched and touched <= set(pair.tolist())  # the min of each sample is one of the pair
