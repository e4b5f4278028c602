"""Decoupled Q-chunking (tandem.value.objectives.dqc): expectile loss and targets against hand-computed values,
the partial critic's scoring, learning, and the robot accepting the published partial critic."""

import numpy as np
import pytest
import torch

from tandem.policies.heads.build import robot_parts
from tandem.policies.heads.config import Dims, HeadConfig
from tandem.policies.heads.critic import ChunkedCritic, CriticConfig
from tandem.value.objectives.critic import CriticObjectiveConfig
from tandem.value.objectives.dqc import DQCCriticObjective, expectile_loss
from tandem.value.objectives.learning import LearningObjective, ObjectiveSpec

S, F, H, A, h = 3, 2, 4, 2, 2
G = 0.5
SMALL = {"hidden": [16, 16]}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dqc(gamma=G, **objective):
    full = ChunkedCritic(CriticConfig(state_dim=S, feature_dim=F, horizon=H, action_dim=A, hidden=(16, 16),
                                      gamma=gamma, partial_horizon=h, ensemble_size=2))
    return DQCCriticObjective(full, CriticObjectiveConfig(**objective))


def constant(net, value):
    """Make an EnsembleMLP output ``value`` for every input (last layer zero weight, bias value)."""
    with torch.no_grad():
        net.weights[-1].zero_()
        net.biases[-1].fill_(value)


def test_expectile_loss_against_hand_values():
    pred, target = torch.tensor([1.0, 3.0, 2.0]), torch.tensor([3.0, 1.0, 2.0])
    assert expectile_loss(pred, target, 0.8).tolist() == pytest.approx([0.8 * 4, 0.2 * 4, 0.0])
    assert expectile_loss(pred, target, 0.5).tolist() == pytest.approx([2.0, 2.0, 0.0])  # half the squared error


def test_an_upper_expectile_fit_lands_above_the_mean_of_the_targets():
    y = torch.tensor([0.0, 0.0, 0.0, 1.0])
    fits = {}
    for kappa in (0.5, 0.9):
        p = torch.zeros((), requires_grad=True)
        opt = torch.optim.SGD([p], lr=0.5)
        for _ in range(500):
            opt.zero_grad()
            expectile_loss(p, y, kappa).mean().backward()
            opt.step()
        fits[kappa] = float(p.detach())
    # the kappa-expectile m of {0, 0, 0, 1} solves 3 (1 - kappa) m = kappa (1 - m): 0.25 and 0.75
    assert fits[0.5] == pytest.approx(0.25, abs=1e-3) and fits[0.9] == pytest.approx(0.75, abs=1e-3)


def test_dqc_targets_against_hand_values():
    obj = dqc()
    constant(obj.value.target, 8.0)           # Vbar(s') = 8
    constant(obj.full.target, -3.0)           # Qbar(s, a_{t:t+H}) = -3 for every member
    constant(obj.critic.target, -5.0)         # Qbar^P(s, a_{t:t+h}) = -5
    bt = {
        "state": torch.zeros(3, S), "features": torch.zeros(3, F), "executed": torch.zeros(3, H, A),
        "reward": torch.tensor([[1.0, 2.0, 4.0, 8.0]] * 3), "valid": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]).bool(),
        "done": torch.tensor([0, 1, 0]).bool(), "next_valid": torch.tensor([1, 0, 1]).bool(),
        "next_state": torch.zeros(3, S), "next_features": torch.zeros(3, F),
    }
    y_q, w, y_p, y_v = obj.targets(bt)
    # full chunk: R = 1 + 1 + 1 + 1 = 4, + 0.5^4 * 8 = 4.5; terminal: R = 4; truncated after 2 ticks: 2 + 0.25 * 8
    assert y_q.tolist() == [4.5, 4.0, 4.0] and w.tolist() == [1.0, 1.0, 1.0]
    assert y_p.tolist() == [-3.0] * 3 and y_v.tolist() == [-5.0] * 3


def test_the_time_reward_and_a_failed_terminal():
    obj = dqc(reward_mode="time", failure_value=-6.0)
    constant(obj.value.target, -2.0)
    bt = {
        "state": torch.zeros(2, S), "features": torch.zeros(2, F), "executed": torch.zeros(2, H, A),
        "reward": torch.zeros(2, H), "valid": torch.ones(2, H, dtype=torch.bool),
        "done": torch.tensor([0, 1]).bool(), "failed": torch.tensor([0, 1]).bool(),
        "next_valid": torch.tensor([1, 0]).bool(), "next_state": torch.zeros(2, S), "next_features": torch.zeros(2, F),
    }
    y_q, _, _, _ = obj.targets(bt)
    # R = -(1 + .5 + .25 + .125) = -1.875; bootstrap 0.0625 * -2; failure: 0.0625 * -6
    assert y_q.tolist() == pytest.approx([-1.875 - 0.125, -1.875 - 0.375])


def test_the_partial_critic_scores_the_first_h_ticks_of_a_longer_chunk():
    partial = dqc().critic
    assert partial.config.horizon == h
    s, f = torch.randn(4, S), torch.randn(4, F)
    a = torch.randn(4, H, A)
    b = a.clone()
    b[:, h:] = torch.randn(4, H - h, A)  # different completions
    with torch.no_grad():
        torch.testing.assert_close(partial.q_values(s, f, a), partial.q_values(s, f, b))
        torch.testing.assert_close(partial.q_values(s, f, a), partial.q_values(s, f, a[:, :h]))


def test_the_partial_critic_learns_the_best_completion():
    """Q(s, a) = sum of the chunk's actions (a reward per tick, terminal); with kappa_d = 0.9 Q^P of a first half
    lands above the mean over the data's completions, toward the best one."""
    obj = dqc(partial_expectile=0.9, value_expectile=0.5)
    rng = torch.Generator().manual_seed(0)
    first = torch.tensor([0.5, -0.5])
    for _ in range(300):
        n = 64
        chunk = torch.cat([first.expand(n, 1, A), torch.rand(n, H - 1, A, generator=rng) * 2 - 1], dim=1)
        reward = chunk.sum(-1)  # float[n, H]
        batch = {"state": torch.zeros(n, S), "features": torch.zeros(n, F), "executed": chunk, "base": chunk,
                 "reward": reward, "valid": torch.ones(n, H, dtype=torch.bool), "done": torch.ones(n, dtype=torch.bool),
                 "next_valid": torch.zeros(n, dtype=torch.bool), "next_state": torch.zeros(n, S),
                 "next_features": torch.zeros(n, F), "truncated": torch.zeros(n, dtype=torch.bool),
                 "intervention": torch.zeros(n, H, dtype=torch.bool), "takeover_start": torch.zeros(n, H, dtype=torch.bool)}
        m = obj.update_tensors(batch)
    assert m["critic/td_abs"] < 0.2
    with torch.no_grad():
        probe = torch.cat([first.expand(256, 1, A), torch.rand(256, H - 1, A, generator=rng) * 2 - 1], dim=1)
        q_full = obj.full.q_values(torch.zeros(256, S), torch.zeros(256, F), probe).mean(0)
        q_part = obj.critic.q_values(torch.zeros(1, S), torch.zeros(1, F), probe[:1]).mean()
    # an upper expectile of the full-chunk values sits well above their mean (0.53 std here; 0.18 with kappa_d 0.5)
    assert float(q_part) > float(q_full.mean()) + 0.4 * float(q_full.std())


def test_the_robot_accepts_the_learners_partial_critic_and_scores_full_candidates():
    values = {"critic": {**SMALL, "partial_horizon": h}, "head": {**SMALL, "num_candidates": 3}}
    learner = LearningObjective(ObjectiveSpec(type="edit", **values))
    rng = np.random.default_rng(0)
    n = 16
    batch = {"state": rng.normal(size=(n, S)).astype(np.float32), "features": rng.normal(size=(n, F)).astype(np.float32),
             "base": rng.uniform(-1, 1, (n, H, A)).astype(np.float32), "executed": rng.uniform(-1, 1, (n, H, A)).astype(np.float32),
             "reward": rng.normal(size=(n, H)).astype(np.float32), "valid": np.ones((n, H), bool),
             "done": np.zeros(n, bool), "truncated": np.zeros(n, bool), "next_state": rng.normal(size=(n, S)).astype(np.float32),
             "next_features": rng.normal(size=(n, F)).astype(np.float32),
             "next_base": rng.uniform(-1, 1, (n, H, A)).astype(np.float32), "next_valid": np.ones(n, bool)}
    metrics = learner.update(batch)
    assert "critic/partial_loss" in metrics and "head/loss" in metrics
    published = learner.weights()["critic"]
    parts = robot_parts(HeadConfig(type="edit", select="critic", **values), Dims(S, F, H, A))
    assert parts.critic.config.horizon == h
    parts.critic.load_weights(published, 1)  # same schema: the robot acts with Q^P
    parts.critic_loaded()
    corr = parts.head.correction({"observation.state": batch["state"][0]}, batch["features"][0], batch["base"][0])
    assert corr.shape == (H, A)
    with pytest.raises(Exception, match="partial_horizon"):
        robot_parts(HeadConfig(type="edit", select="critic", critic={**SMALL, "partial_horizon": H}), Dims(S, F, H, A))
