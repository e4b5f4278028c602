"""Residual and edit heads (tandem.policies.heads.networks): init behaviour, numpy/torch agreement, weights, selection."""

import numpy as np
import pytest
import torch

from tandem.core.errors import ConfigError
from tandem.policies.heads.critic import ChunkedCritic, CriticConfig
from tandem.policies.heads.networks import (
    EditHead,
    EditHeadConfig,
    ResidualHead,
    ResidualHeadConfig,
    tanh_gaussian_log_prob,
)
from tandem.policies.heads.select import best_of_candidates, make_selector

S, F, H, A = 5, 3, 4, 2
DIMS = dict(state_dim=S, feature_dim=F, horizon=H, action_dim=A, hidden=(32, 32))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def inputs(bsz=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(bsz, S, generator=g), torch.randn(bsz, F, generator=g), torch.rand(bsz, H, A, generator=g) * 2 - 1


def perturb(module, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


# ---- residual ----------------------------------------------------------------------------------------


def test_new_residual_head_is_the_identity():
    head = ResidualHead(ResidualHeadConfig(**DIMS))
    s, f, base = inputs()
    torch.testing.assert_close(head.act(s, f, base), base)
    obs = {"observation.state": s[0].numpy()}
    corr = head.correction(obs, f[0].numpy().astype(np.float16), base[0].numpy())
    assert corr.shape == (H, A) and corr.dtype == np.float32 and not corr.any()


def test_residual_numpy_path_matches_torch_and_is_bounded():
    for tick_input in (True, False):
        head = ResidualHead(ResidualHeadConfig(**DIMS, alpha=0.2, tick_input=tick_input))
        perturb(head, scale=1.0)
        head.sync_numpy()
        s, f, base = inputs()
        with torch.no_grad():
            ref = head(s, f, base)
        assert ref.abs().max() <= 0.2 and ref.abs().max() > 0.01
        for i in range(3):
            got = head.correction({"observation.state": s[i].numpy()}, f[i].numpy(), base[i].numpy())
            np.testing.assert_allclose(got, ref[i].numpy(), atol=2e-6)


def test_residual_head_sees_the_tick_position():
    head = ResidualHead(ResidualHeadConfig(**DIMS))
    perturb(head)
    s, f, _ = inputs(1)
    same = torch.zeros(1, H, A)  # identical base actions on every tick
    with torch.no_grad():
        corr = head(s, f, same)[0]
    assert not torch.allclose(corr[0], corr[1])


def test_residual_weights_roundtrip_and_refusals():
    src = ResidualHead(ResidualHeadConfig(**DIMS, seed=3))
    perturb(src)
    dst = ResidualHead(ResidualHeadConfig(**DIMS))
    w = src.weights()
    assert {k: [str(v.dtype), list(v.shape)] for k, v in w.items()} == src.schema()["params"]
    dst.load_weights(w, version=5)
    assert dst.version == 5
    s, f, base = inputs()
    obs = {"observation.state": s[0].numpy()}
    src.sync_numpy()
    np.testing.assert_allclose(dst.correction(obs, f[0].numpy(), base[0].numpy()),
                               src.correction(obs, f[0].numpy(), base[0].numpy()), atol=1e-7)
    assert dst.correction(obs, f[0].numpy(), base[0].numpy()).any()
    w["0.weight"][0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        dst.load_weights(w, 6)
    other = ResidualHead(ResidualHeadConfig(**{**DIMS, "hidden": (16, 32)}))
    with pytest.raises(ValueError, match="expected"):
        other.load_weights(src.weights(), 6)
    assert dst.version == 5


def test_residual_correction_checks_observation_sizes():
    head = ResidualHead(ResidualHeadConfig(**DIMS))
    base = np.zeros((H, A), np.float32)
    with pytest.raises(ValueError, match="state_dim"):
        head.correction({"observation.state": np.zeros(S + 1, np.float32)}, np.zeros(F, np.float16), base)
    with pytest.raises(ValueError, match="feature_dim"):
        head.correction({"observation.state": np.zeros(S, np.float32)}, np.zeros(F + 2, np.float16), base)
    # no features yet (before the first base chunk) reads as zeros
    assert not head.correction({"observation.state": np.zeros(S, np.float32)}, np.zeros(0, np.float16), base).any()


def test_head_config_errors():
    with pytest.raises(ConfigError, match="alpha"):
        ResidualHeadConfig(alpha=0.0)
    with pytest.raises(ConfigError, match="beta"):
        EditHeadConfig(beta=2.5)
    with pytest.raises(ConfigError, match="hidden"):
        EditHeadConfig(hidden=())


# ---- edit --------------------------------------------------------------------------------------------


def test_edit_head_starts_zero_mean_with_bounded_candidates():
    head = EditHead(EditHeadConfig(**DIMS, beta=0.1, num_candidates=6, init_log_std=-0.5))
    s, f, base = inputs()
    mean, log_std = head.dist_params(s, f, base)
    assert not mean.any()
    torch.testing.assert_close(log_std, torch.full_like(log_std, -0.5))
    cands = head.candidates(s, f, base, generator=torch.Generator().manual_seed(0))
    assert cands.shape == (3, 8, H, A)  # base, the mean edit, 6 sampled edits
    torch.testing.assert_close(cands[:, 0], base)
    torch.testing.assert_close(cands[:, 1], base)  # zero mean edit at init
    edits = cands[:, 2:] - base.unsqueeze(1)
    assert edits.abs().max() < 0.1 and edits.abs().max() > 0.01


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    mean, log_std = torch.randn(4, 6), torch.randn(4, 6) * 0.3
    u = mean + log_std.exp() * torch.randn(4, 6)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()])
    ref = dist.log_prob(torch.tanh(u).clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    torch.testing.assert_close(tanh_gaussian_log_prob(u, mean, log_std), ref, atol=1e-3, rtol=1e-4)


def test_edit_sample_is_reparameterised():
    head = EditHead(EditHeadConfig(**DIMS))
    perturb(head)
    s, f, base = inputs()
    eps, log_prob = head.sample(s, f, base, 2, torch.Generator().manual_seed(0))
    assert eps.shape == (3, 2, H, A) and log_prob.shape == (3, 2)
    (eps.sum() + log_prob.sum()).backward()
    assert all(p.grad is not None for p in head.parameters())


def test_edit_numpy_forward_matches_torch():
    head = EditHead(EditHeadConfig(**DIMS, log_std_min=-20.0, log_std_max=1.0))
    perturb(head)
    head.sync_numpy()
    s, f, base = inputs(1)
    with torch.no_grad():
        mean, _ = head.dist_params(s, f, base)
    with torch.no_grad():
        last = head.mlp[-1]
        last.bias[H * A:] = -20.0  # std ~ 0: candidates become deterministic, base + beta tanh(mean)
        last.weight[H * A:] = 0.0
    head.sync_numpy()
    cands = head.propose_np(np.concatenate([s[0].numpy(), f[0].numpy()]), base[0].numpy(), n=2)
    expected = base[0].numpy() + head.config.beta * np.tanh(mean[0].numpy()).reshape(H, A)
    np.testing.assert_array_equal(cands[0], base[0].numpy())
    for k in (1, 2, 3):  # the mean edit, then two samples at std ~ 0
        np.testing.assert_allclose(cands[k], expected, atol=1e-5)


def test_edit_correction_executes_the_selected_candidate():
    head = EditHead(EditHeadConfig(**DIMS, num_candidates=8))
    s, f, base = inputs(1)
    obs = {"observation.state": s[0].numpy()}
    assert not head.correction(obs, f[0].numpy(), base[0].numpy()).any()  # no critic yet: run the base
    seen = {}

    def by_sum(state, features, cands):
        seen["cands"] = cands
        return int(np.argmax(cands.reshape(len(cands), -1).sum(1)))

    head.set_selector(by_sum)
    corr = head.correction(obs, f[0].numpy(), base[0].numpy())
    cands = seen["cands"]
    assert cands.shape == (10, H, A)  # base, the mean edit, 8 sampled edits
    np.testing.assert_array_equal(cands[0], base[0].numpy())
    sf = np.concatenate([s[0].numpy(), f[0].numpy()])
    np.testing.assert_allclose(cands[1], head.mean_edit_np(sf, base[0].numpy()), atol=1e-6)
    np.testing.assert_allclose(base[0].numpy() + corr, cands[np.argmax(cands.reshape(10, -1).sum(1))], atol=1e-6)
    assert head.last_choice == int(np.argmax(cands.reshape(10, -1).sum(1)))


def test_edit_head_mean_mode_runs_the_mean_edit_once_trained():
    head = EditHead(EditHeadConfig(**DIMS))
    head.use_mean = True
    s, f, base = inputs(1)
    obs = {"observation.state": s[0].numpy()}
    assert not head.correction(obs, f[0].numpy(), base[0].numpy()).any()  # version 0: the base chunk
    with torch.no_grad():
        head.mlp[-1].bias[: H * A] = 0.5
    head.load_weights(head.weights(), 1)
    corr = head.correction(obs, f[0].numpy(), base[0].numpy())
    np.testing.assert_allclose(corr, np.full((H, A), head.config.beta * np.tanh(0.5)), atol=1e-5)


def test_edit_head_with_the_critic_selector_picks_the_critic_argmax():
    critic = ChunkedCritic(CriticConfig(state_dim=S, feature_dim=F, horizon=H, action_dim=A, hidden=(32,)))
    head = EditHead(EditHeadConfig(**DIMS, num_candidates=8, beta=0.2))
    selector = make_selector(critic)
    seen = {}

    def spy(state, features, cands):
        seen["cands"] = cands
        seen["index"] = selector(state, features, cands)
        return seen["index"]

    head.set_selector(spy)
    s, f, base = inputs(1)
    corr = head.correction({"observation.state": s[0].numpy()}, f[0].numpy(), base[0].numpy())
    scores = critic.score(s[0].numpy(), f[0].numpy(), seen["cands"])
    assert seen["index"] == int(np.argmax(scores))
    np.testing.assert_allclose(base[0].numpy() + corr, seen["cands"][int(np.argmax(scores))], atol=1e-6)
    _, idx, _ = best_of_candidates(critic, s, f, torch.from_numpy(seen["cands"]).unsqueeze(0))
    assert idx.item() == seen["index"]


def test_edit_weights_roundtrip():
    src = EditHead(EditHeadConfig(**DIMS, seed=1))
    perturb(src)
    dst = EditHead(EditHeadConfig(**DIMS, seed=2))
    dst.load_weights(src.weights(), version=3)
    s, f, base = inputs()
    for a, b in zip(src.dist_params(s, f, base), dst.dist_params(s, f, base), strict=True):
        torch.testing.assert_close(a, b)
    assert dst.schema()["arch"]["beta"] == src.config.beta and dst.version == 3


def test_robot_and_learner_build_the_same_candidates_and_choose_the_same_one():
    """The chunk the robot runs is the one the learner's backup assumes: with the learner's weights shipped to
    the robot, the same state and the same sampling draws, both build {base, mean edit, N edits} clipped to
    the action bound, and the critic's pick (same random pair of members) is the same candidate."""
    cfg = EditHeadConfig(**DIMS, num_candidates=6, beta=0.7, action_bound=1.0, init_log_std=-0.5)
    ccfg = CriticConfig(state_dim=S, feature_dim=F, horizon=H, action_dim=A, hidden=(32,), ensemble_size=10)
    learner_head, learner_critic = EditHead(cfg), ChunkedCritic(ccfg)
    perturb(learner_head, seed=4)
    perturb(learner_critic, scale=0.5, seed=5)
    robot_head, robot_critic = EditHead(EditHeadConfig(**{**cfg.__dict__, "seed": 9})), ChunkedCritic(ccfg)
    robot_head.load_weights(learner_head.weights(), 1)
    robot_critic.load_weights(learner_critic.weights(), 1)
    selector = make_selector(robot_critic)
    s, f, base = inputs(16, seed=2)
    base = base * 1.2  # some base actions outside the bound
    noise = torch.randn(16, 6, H * A, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        learner_cands = learner_head.candidates(s, f, base, noise=noise)
    assert learner_cands.abs().max() <= 1.0
    chosen = []
    for i in range(16):
        sf = np.concatenate([s[i].numpy(), f[i].numpy()])
        robot_cands = robot_head.propose_np(sf, base[i].numpy(), noise=noise[i].numpy())
        np.testing.assert_allclose(robot_cands, learner_cands[i].numpy(), atol=1e-5)
        gen = torch.Generator().manual_seed(100 + i)
        robot_critic.generator.set_state(gen.get_state())
        robot_index = selector(s[i].numpy(), f[i].numpy(), robot_cands)
        with torch.no_grad():
            _, learner_index, _ = best_of_candidates(learner_critic, s[i:i + 1], f[i:i + 1], learner_cands[i:i + 1],
                                                     generator=torch.Generator().manual_seed(100 + i))
        assert robot_index == int(learner_index[0])
        chosen.append(robot_index)
    assert len(set(chosen)) > 1  # the pick depends on the state: the agreement is not a constant
