"""Critic, residual-head and edit-head objectives (tandem.value.objectives) and advantages."""

import io

import numpy as np
import pytest
import torch

from tandem.core.errors import ConfigError
from tandem.policies.heads.critic import ChunkedCritic, CriticConfig
from tandem.policies.heads.networks import EditHead, EditHeadConfig, ResidualHead, ResidualHeadConfig
from tandem.value.objectives.advantages import advantage, awr_weights, q_and_value, weighted_bc_loss
from tandem.value.objectives.common import to_tensors
from tandem.value.objectives.critic import CriticObjective, CriticObjectiveConfig
from tandem.value.objectives.edit import EditHeadObjective, EditObjectiveConfig
from tandem.value.objectives.residual import ResidualHeadObjective, ResidualObjectiveConfig

S, F, H, A = 5, 3, 4, 2
DIMS = dict(state_dim=S, feature_dim=F, horizon=H, action_dim=A, hidden=(32, 32))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batch(bsz=32, seed=0):
    """A numpy batch as the replay would hand it over (float16 features, bool flags)."""
    rng = np.random.default_rng(seed)
    valid = np.ones((bsz, H), bool)
    valid[0, 2:] = False
    done = np.zeros(bsz, bool)
    done[0] = True
    onset = np.zeros((bsz, H), bool)
    onset[1, 1] = True
    return {
        "state": rng.normal(size=(bsz, S)).astype(np.float32),
        "features": rng.normal(size=(bsz, F)).astype(np.float16),
        "base": rng.uniform(-1, 1, (bsz, H, A)).astype(np.float32),
        "executed": rng.uniform(-1, 1, (bsz, H, A)).astype(np.float32),
        "reward": rng.normal(size=(bsz, H)).astype(np.float32),
        "valid": valid, "done": done, "truncated": np.zeros(bsz, bool), "takeover_start": onset,
        "next_state": rng.normal(size=(bsz, S)).astype(np.float32),
        "next_features": rng.normal(size=(bsz, F)).astype(np.float16),
        "next_base": rng.uniform(-1, 1, (bsz, H, A)).astype(np.float32),
        "next_valid": ~done,
        "buffer": np.zeros(bsz, np.int8),  # extra keys are ignored
    }


def critic_objective(seed=0, lr=3e-4, warmup=0, rlif=0.0, **kw):
    critic = ChunkedCritic(CriticConfig(**{**DIMS, "seed": seed, "lr": lr, **kw}))
    return CriticObjective(critic, CriticObjectiveConfig(warmup_steps=warmup, rlif_penalty=rlif, seed=seed))


def test_to_tensors_converts_and_names_missing_keys():
    b = to_tensors(batch(), "cpu")
    assert b["features"].dtype == torch.float32 and b["valid"].dtype == torch.bool
    assert "buffer" not in b
    partial = {k: v for k, v in batch().items() if k not in ("takeover_start", "truncated")}
    assert not to_tensors(partial, "cpu")["takeover_start"].any()
    with pytest.raises(KeyError, match="next_valid"):
        to_tensors({k: v for k, v in batch().items() if k != "next_valid"}, "cpu")


def test_critic_objective_step_metrics_and_rlif_option():
    obj = critic_objective()
    m = obj.update(batch())
    for key in ("critic/loss", "critic/td_abs", "critic/q_mean", "critic/target_mean", "critic/grad_norm"):
        assert np.isfinite(m[key])
    assert obj.steps == 1 and m["critic/weight_frac"] == 1.0
    # the RLIF penalty lowers the targets by exactly gamma^k / B summed over onsets (one onset at tick 1)
    a, b = critic_objective(), critic_objective(rlif=1.0)
    ma, mb = a.update(batch()), b.update(batch())
    assert ma["critic/target_mean"] - mb["critic/target_mean"] == pytest.approx(0.99 / 32, abs=1e-5)
    assert obj.name == "critic" and set(obj.weights()) == {"critic"}
    assert set(obj.weights()["critic"]) == set(obj.critic.schema()["params"])


def test_time_reward_values_a_failure_mark_as_never_succeeding():
    """With -1 per tick until success, a failed terminal must not end the costs (it would look best)."""
    def objective(mode, failure_value=None, gamma=0.99):
        critic = ChunkedCritic(CriticConfig(**{**DIMS, "gamma": gamma}))
        cfg = CriticObjectiveConfig(reward_mode=mode, reward_scale=0.1, failure_value=failure_value)
        return CriticObjective(critic, cfg)

    failed = batch()
    failed["failed"] = failed["done"].copy()  # row 0: a failure mark after 2 ticks
    ok, bad = objective("time"), objective("time")
    assert bad.failure_value == pytest.approx(-0.1 / 0.01)
    mo, mb = ok.update(batch()), bad.update(failed)
    # only row 0 changes: its target drops by gamma^2 * 10, the batch mean by that over 32
    assert mo["critic/target_mean"] - mb["critic/target_mean"] == pytest.approx(0.99**2 * 10 / 32, rel=1e-4)
    task_ok, task_bad = objective("task"), objective("task")  # task reward: a failure just ends the rewards
    assert task_ok.update(batch())["critic/target_mean"] == task_bad.update(failed)["critic/target_mean"]
    assert objective("task", failure_value=-3.0).failure_value == -3.0
    with pytest.raises(ConfigError, match="failure_value"):
        objective("time", gamma=1.0)
    with pytest.raises(ConfigError, match="failure_value"):
        CriticObjectiveConfig(failure_value=float("nan"))


def test_residual_objective_waits_for_warmup_then_raises_the_pessimistic_q():
    co = critic_objective(lr=1e-9, warmup=3)  # the critic barely moves: a fixed landscape for the head
    head = ResidualHead(ResidualHeadConfig(**DIMS, alpha=0.3))
    obj = ResidualHeadObjective(head, co, ResidualObjectiveConfig(lr=3e-3))
    before = [p.clone() for p in head.parameters()]
    for _ in range(3):
        assert "head/loss" not in obj.update(batch())
    assert all(torch.equal(a, b) for a, b in zip(before, head.parameters(), strict=True))
    b = to_tensors(batch(), "cpu")
    with torch.no_grad():
        q0 = co.critic.q_pess(b["state"], b["features"], head.act(b["state"], b["features"], b["base"])).mean()
    for _ in range(60):
        m = obj.update(batch())
    assert m["head/steps"] == 60.0 and m["head/correction_abs"] > 0
    with torch.no_grad():
        q1 = co.critic.q_pess(b["state"], b["features"], head.act(b["state"], b["features"], b["base"])).mean()
    assert q1 > q0 + 1e-3
    # the head step leaves the critic's gradients alone and its parameters trainable
    assert all(p.requires_grad for p in co.critic.online.parameters())
    pub = obj.weights()
    assert obj.name == "residual" and set(pub) == {"head"} and set(pub["head"]) == set(head.schema()["params"])


def test_residual_target_action_is_base_plus_head_with_optional_clipped_noise():
    co = critic_objective()
    head = ResidualHead(ResidualHeadConfig(**DIMS))
    b = to_tensors(batch(), "cpu")
    obj = ResidualHeadObjective(head, co)
    torch.testing.assert_close(obj.target_action(b["next_state"], b["next_features"], b["next_base"]), b["next_base"])
    noisy = ResidualHeadObjective(head, co, ResidualObjectiveConfig(target_noise=1.0, noise_clip=0.05))
    diff = noisy.target_action(b["next_state"], b["next_features"], b["next_base"]) - b["next_base"]
    assert diff.abs().max() <= 0.05 + 1e-7 and diff.abs().max() > 0.04
    assert co.next_action == noisy.target_action


def test_edit_objective_improves_q_and_tunes_alpha():
    co = critic_objective(lr=1e-9)
    head = EditHead(EditHeadConfig(**DIMS, beta=0.2, num_candidates=4, init_log_std=-1.0))
    obj = EditHeadObjective(head, co, EditObjectiveConfig(lr=3e-3, init_alpha=1e-3, alpha_lr=1e-2, actor_q="aggregate"))
    assert obj.target_entropy == -H * A / 2
    b = to_tensors(batch(), "cpu")

    def q_of_mean_edit():
        with torch.no_grad():
            mean, _ = head.dist_params(b["state"], b["features"], b["base"])
            edited = head.edit(b["base"], torch.tanh(mean).reshape(-1, H, A))
            return co.critic.q_pess(b["state"], b["features"], edited).mean()

    q0 = q_of_mean_edit()
    for _ in range(60):
        m = obj.update(batch())
    assert q_of_mean_edit() > q0 + 1e-3
    assert m["head/log_prob_action"] == pytest.approx(-m["head/entropy"] - H * A * np.log(0.2), abs=1e-3)
    assert obj.name == "edit" and set(obj.weights()) == {"head", "critic"}
    # temperature: an unreachable entropy target raises alpha, a very low one lowers it
    for target, up in ((50.0, True), (-500.0, False)):
        co2 = critic_objective(lr=1e-9)
        o = EditHeadObjective(EditHead(EditHeadConfig(**DIMS)), co2,
                              EditObjectiveConfig(init_alpha=0.1, alpha_lr=0.05, target_entropy=target))
        for _ in range(5):
            o.update(batch())
        assert (o.alpha > 0.1) == up


def test_edit_target_action_is_the_target_critic_argmax_over_base_and_edits():
    co = critic_objective()
    head = EditHead(EditHeadConfig(**DIMS, num_candidates=5, beta=0.2))
    obj = EditHeadObjective(head, co)
    b = to_tensors(batch(), "cpu")
    seed_state = co.generator.get_state()
    a = obj.target_action(b["next_state"], b["next_features"], b["next_base"])
    co.generator.set_state(seed_state)
    cands = head.candidates(b["next_state"], b["next_features"], b["next_base"], None, co.generator)
    with torch.no_grad():
        scores = co.critic.q_values(b["next_state"], b["next_features"], cands, target=True).min(0).values
    torch.testing.assert_close(a, cands[torch.arange(32), scores.argmax(1)])


def test_edit_acting_mean_targets_and_values_follow_the_mean_edit():
    """A robot that runs base + mean edit (head.select=mean): a' and V(s) use that chunk, not a search."""
    co = critic_objective()
    head = EditHead(EditHeadConfig(**DIMS, num_candidates=5, beta=0.7))
    with torch.no_grad():  # a non-zero mean edit, so "mean" differs from the base chunk
        head.mlp[-1].bias[: H * A].normal_(0.0, 1.0, generator=torch.Generator().manual_seed(3))
    obj = EditHeadObjective(head, co, EditObjectiveConfig(acting="mean", awr_weight=1.0, awr_beta=0.5))
    b = to_tensors(batch(), "cpu")
    a = obj.target_action(b["next_state"], b["next_features"], b["next_base"])
    mean, _ = head.dist_params(b["next_state"], b["next_features"], b["next_base"])
    expected = b["next_base"] + 0.7 * torch.tanh(mean).reshape(-1, H, A)
    torch.testing.assert_close(a, expected)
    assert not torch.allclose(a, b["next_base"])
    # the robot's numpy mean edit is the same chunk
    sf = torch.cat([b["next_state"][0], b["next_features"][0]]).numpy()
    head.sync_numpy()
    np.testing.assert_allclose(head.mean_edit_np(sf, b["next_base"][0].numpy()), a[0].detach().numpy(), atol=1e-5)
    # V(s) for the advantage is Q of the mean edit: executing exactly it has zero advantage
    chunk = head.mean_chunk(b["state"], b["features"], b["base"]).detach()
    m = obj._awr_terms({**b, "executed": chunk})
    assert m["head/awr_adv"] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(Exception, match="acting"):
        EditObjectiveConfig(acting="argmax")


def human_batch():
    """An edit head (beta 0.7), a critic objective and a batch where records 3 (from its second tick) and 5
    (throughout) were driven by a human: ``intervention`` bool[B, H]."""
    co = critic_objective()
    head = EditHead(EditHeadConfig(**DIMS, beta=0.7))
    b = to_tensors(batch(), "cpu")
    human = torch.zeros_like(b["valid"])
    human[3, 1:] = True
    human[5] = True
    return co, head, b, human


def hand_log_density(head, b):
    """float[B, H, A]: log N(atanh((executed - base) / beta); mean, std) per tick and action, by hand."""
    mean, log_std = head.dist_params(b["state"], b["features"], b["base"])
    u = torch.atanh(((b["executed"] - b["base"]) / head.config.beta).flatten(1).clamp(-0.995, 0.995))
    return (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).reshape(-1, H, A)


def test_edit_awr_ticks_human_imitates_only_the_ticks_a_human_drove():
    """awr_ticks "human": the likelihood covers intervention ticks; chunks without one do not count."""
    co, head, b, human = human_batch()
    objs = {t: EditHeadObjective(head, co, EditObjectiveConfig(acting="mean", awr_weight=1.0, awr_beta=1e6,
                                                               awr_ticks=t)) for t in ("all", "human")}
    # changing what ran on an autonomous tick moves the "all" loss and leaves the "human" loss alone
    moved = b["executed"].clone()
    moved[3, 0] += 0.3
    moved[7] += 0.3
    for t, obj in objs.items():
        before = float(obj._awr_terms({**b, "intervention": human})["loss"])
        after = float(obj._awr_terms({**b, "intervention": human, "executed": moved})["loss"])
        assert (before == pytest.approx(after)) == (t == "human")
    # by hand: with w = 1 (huge awr_beta) the loss is minus the mean over the two records of the mean log density
    # of their human ticks' edits
    log_p = hand_log_density(head, b)
    expected = -(log_p[3, 1:].mean() + log_p[5].mean()) / 2
    got = objs["human"]._awr_terms({**b, "intervention": human})
    assert float(got["loss"]) == pytest.approx(float(expected), rel=1e-5)
    # no human tick in the batch: nothing to imitate, a zero loss that still backpropagates
    none = objs["human"]._awr_terms({**b, "intervention": torch.zeros_like(human)})
    assert float(none["loss"]) == 0.0 and none["loss"].requires_grad
    # the default batch from a replay without the field has no human ticks
    assert not to_tensors(batch(), "cpu")["intervention"].any()
    with pytest.raises(Exception, match="awr_ticks"):
        EditObjectiveConfig(awr_ticks="takeover")


def test_edit_human_min_weight_floors_the_weight_of_corrections_only():
    """human_min_weight: chunks with a human tick weigh at least the floor; the robot's own chunks keep exp(A/beta)."""
    co, head, b, human = human_batch()
    human[0, 3] = True  # past record 0's episode end (valid[0, 2:] is false): not a human tick
    with torch.no_grad():
        policy = head.mean_chunk(b["state"], b["features"], b["base"]).unsqueeze(1)
        adv = advantage(co.critic, b["state"], b["features"], b["executed"], policy, generator=torch.Generator())
    log_p = hand_log_density(head, b)
    mask = b["valid"].float().unsqueeze(-1).expand(-1, H, A)
    per_sample = (log_p * mask).sum((1, 2)) / mask.sum((1, 2))
    is_human = torch.zeros(32, dtype=torch.bool)
    is_human[[3, 5]] = True
    # a tiny temperature: exp(A / beta) is ~0 or capped at 20, so the floor visibly changes the weights
    w = awr_weights(adv, 1e-3, 20.0)
    for floor, expected_w in ((0.0, w), (1.0, torch.where(is_human, w.clamp_min(1.0), w))):
        obj = EditHeadObjective(head, co, EditObjectiveConfig(acting="mean", awr_weight=1.0, awr_beta=1e-3,
                                                              awr_w_max=20.0, human_min_weight=floor))
        got = obj._awr_terms({**b, "intervention": human})
        assert float(got["loss"]) == pytest.approx(float(-(expected_w * per_sample).mean()), rel=1e-5)
    assert bool((w[is_human] < 1.0).any())  # the floor changed something
    with pytest.raises(Exception, match="human_min_weight"):
        EditObjectiveConfig(human_min_weight=-1.0)


@pytest.mark.parametrize("kind", ["critic", "residual", "edit"])
def test_state_dict_resume_is_exact(kind):
    def build():
        co = critic_objective(seed=0, loss="hl_gauss", bins=11, v_min=-5.0, v_max=5.0)
        if kind == "critic":
            return co
        if kind == "residual":
            return ResidualHeadObjective(ResidualHead(ResidualHeadConfig(**DIMS)), co,
                                         ResidualObjectiveConfig(target_noise=0.1))
        return EditHeadObjective(EditHead(EditHeadConfig(**DIMS, num_candidates=3)), co)

    a = build()
    for i in range(3):
        a.update(batch(seed=i))
    b = build()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # as a checkpoint would (no tensors shared between a and b)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for i in range(3, 5):
        ma, mb = a.update(batch(seed=i)), b.update(batch(seed=i))
        assert ma == mb
    wa, wb = a.weights(), b.weights()
    assert wa.keys() == wb.keys()
    for kind in wa:
        for name in wa[kind]:
            np.testing.assert_array_equal(wa[kind][name], wb[kind][name])


def test_advantages_and_awr_weights():
    critic = ChunkedCritic(CriticConfig(**DIMS, aggregation="min"))
    b = to_tensors(batch(8), "cpu")
    policy = torch.rand(8, 6, H, A)
    q, v = q_and_value(critic, b["state"], b["features"], b["executed"], policy)
    with torch.no_grad():
        q_ref = critic.q_pess(b["state"], b["features"], b["executed"])
        v_ref = torch.stack([critic.q_pess(b["state"], b["features"], policy[:, k]) for k in range(6)], 1).mean(1)
    torch.testing.assert_close(q, q_ref)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(advantage(critic, b["state"], b["features"], b["executed"], policy), q_ref - v_ref)
    adv = torch.tensor([-1.0, 0.0, 0.5, 100.0])
    w = awr_weights(adv, beta=0.5, w_max=20.0)
    torch.testing.assert_close(w, torch.tensor([np.exp(-2.0), 1.0, np.e, 20.0], dtype=torch.float32))
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert weighted_bc_loss(loss, w).item() == pytest.approx(float((w * loss).sum() / 4))
    assert weighted_bc_loss(loss, w, normalize=True).item() == pytest.approx(float((w * loss).sum() / w.sum()))
    with pytest.raises(ValueError):
        awr_weights(adv, beta=0.0, w_max=1.0)


_RANK_SCRIPT = r"""
import sys, numpy as np, torch, torch.distributed as dist
sys.path.insert(0, {testdir!r})
import test_objectives as t
from tandem.policies.heads.networks import ResidualHead, ResidualHeadConfig
from tandem.value.objectives.residual import ResidualHeadObjective
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + port, rank=rank, world_size=2)
co = t.critic_objective(lr=1e-3)
co.distributed = True
obj = ResidualHeadObjective(ResidualHead(ResidualHeadConfig(**t.DIMS)), co)
for i in range(4):
    full = t.batch(seed=i)
    obj.update({{k: v[rank * 16:(rank + 1) * 16] for k, v in full.items()}})
w = {{**obj.weights(), **co.weights()}}
np.savez(out, **{{kind + "." + k: v for kind in w for k, v in w[kind].items()}})
dist.barrier()  # no rank tears gloo down while the other is still in its last collective
dist.destroy_process_group()
if rank == 0:
    # rank 0 hosts the rendezvous TCPStore: it waits (stdin closed by the test) until rank 1 has left the
    # group, so rank 1 never tears gloo down against a store that is already gone (under torchrun the
    # agent hosts the store and outlives every rank)
    sys.stdin.read()
"""


def test_distributed_ranks_match_full_batch_training(tmp_path):
    """Two gloo ranks on half batches end identical to each other and to one process on the full batch."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT.format(testdir=os.path.dirname(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), port, str(tmp_path / f"w{r}.npz")], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    try:
        for p in reversed(procs):  # rank 1 first: rank 0, the store's host, exits once its stdin closes
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, out.decode()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    co = critic_objective(lr=1e-3)
    single = ResidualHeadObjective(ResidualHead(ResidualHeadConfig(**DIMS)), co)
    for i in range(4):
        single.update(batch(seed=i))
    weights = {**single.weights(), **co.weights()}
    ref = {f"{kind}.{k}": v for kind, arrays in weights.items() for k, v in arrays.items()}
    assert set(w0.files) == set(ref)
    for name in ref:
        np.testing.assert_array_equal(w0[name], w1[name])
        np.testing.assert_allclose(w0[name], ref[name], atol=1e-5)


def test_factory_builds_each_objective_and_checks_dims():
    from tandem.core.errors import ConfigError
    from tandem.value.objectives.learning import make_learning_objective

    ccfg = CriticConfig(**DIMS)
    assert make_learning_objective("critic", ccfg).name == "critic"
    assert make_learning_objective("residual", ccfg, ResidualHeadConfig(**DIMS)).name == "residual"
    assert make_learning_objective("edit", ccfg, EditHeadConfig(**DIMS)).name == "edit"
    with pytest.raises(ConfigError, match="head.horizon"):
        make_learning_objective("edit", ccfg, EditHeadConfig(**{**DIMS, "horizon": H + 1}))
    with pytest.raises(ConfigError, match="ResidualHeadConfig"):
        make_learning_objective("residual", ccfg, EditHeadConfig(**DIMS))
    with pytest.raises(ConfigError, match="kind"):
        make_learning_objective("sac", ccfg)


def test_bench_learner_smoke():
    from tandem.bench.learner import bench_learner

    out = bench_learner(batch_size=8, updates=2, threads=1, horizon=H, action_dim=A, state_dim=S, feature_dim=F,
                        publish_reps=2, head_calls=5, num_candidates=2)
    assert out["critic_updates_per_s"] > 0 and out["edit_updates_per_s"] > 0 and out["edit_mean_awr_updates_per_s"] > 0
    assert out["publish"]["bytes"] > 4 * (out["params"]["head"] + out["params"]["critic"])
    assert out["residual_head_boundary"]["n"] == 5
