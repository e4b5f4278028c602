"""The shared head/critic description (tandem.policies.heads.build): learner objective, robot parts, init, AWR, time reward."""

import io

import numpy as np
import pytest
import torch
from test_objectives import A, F, H, S, batch

from tandem.core.errors import ConfigError
from tandem.policies.heads.build import robot_parts
from tandem.policies.heads.config import Dims, HeadConfig
from tandem.protocol.checkpoint import save_checkpoint
from tandem.protocol.messages import weights_schema_hash
from tandem.runtime.build import head_consumers
from tandem.value.objectives.base import ObjectiveConfig, make_objective
from tandem.value.objectives.critic import CriticObjective, CriticObjectiveConfig
from tandem.value.objectives.edit import EditHeadObjective, EditObjectiveConfig
from tandem.value.objectives.learning import LearningObjective, ObjectiveSpec

SMALL = {"critic": {"hidden": [32, 32]}, "head": {"hidden": [32, 32], "beta": 0.5, "num_candidates": 4}}
DIMS = Dims(S, F, H, A)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_learner_objective_builds_from_the_first_batch_and_matches_the_robot_schema():
    obj = make_objective(ObjectiveConfig(type="edit", **SMALL))
    assert obj.weights() == {} and obj.state_dict() == {}
    metrics = obj.update(batch())
    assert "critic/td_abs" in metrics and obj.dims == DIMS
    weights = obj.weights()
    assert set(weights) == {"head", "critic"}
    parts = robot_parts(HeadConfig(type="edit", **SMALL), DIMS)
    for kind in ("head", "critic"):  # the robot accepts what the learner publishes
        consumer = head_consumers(parts)[kind]
        arrays = {k: v for k, v in weights[kind].items()}
        schema = {k: (str(v.dtype), tuple(v.shape)) for k, v in arrays.items()}
        assert weights_schema_hash(consumer.weights_schema()) == weights_schema_hash(schema)
        consumer.load_weights(consumer.prepare_weights(arrays, 3), 3)
        assert consumer.version == 3
    assert parts.head.selector is not None  # the first critic weights installed the selector
    obs = {"observation.state": np.zeros(S, np.float32)}
    corr = parts.head.correction(obs, np.zeros(F, np.float16), np.zeros((H, A), np.float32))
    assert corr.shape == (H, A) and parts.head.last_choice is not None and parts.value() is not None


def test_robot_refuses_weights_of_another_architecture():
    learner = make_objective(ObjectiveConfig(type="edit", critic={"hidden": [16]}, head=SMALL["head"]))
    learner.update(batch())
    parts = robot_parts(HeadConfig(type="edit", **SMALL), DIMS)
    with pytest.raises(ValueError):
        head_consumers(parts)["critic"].prepare_weights(learner.weights()["critic"], 1)


def test_bad_settings_fail_when_the_learner_objective_is_made_not_at_the_first_batch():
    with pytest.raises(ConfigError, match="objective.head.hiden"):
        make_objective(ObjectiveConfig(type="edit", head={"hiden": [3]}))
    with pytest.raises(ConfigError, match="objective.critic_objective.reward_mod"):
        make_objective(ObjectiveConfig(type="residual", critic_objective={"reward_mod": "time"}))
    with pytest.raises(ConfigError, match="objective.critic.state_dim"):  # sizes come from the data
        make_objective(ObjectiveConfig(type="critic", critic={"state_dim": 3}))


def test_unknown_settings_name_the_key():
    with pytest.raises(ConfigError, match="objective.critic.hiden"):
        LearningObjective(ObjectiveSpec(type="critic", critic={"hiden": [3]})).build(DIMS)
    with pytest.raises(ConfigError, match="head.select"):
        HeadConfig(type="edit", select="best")


def test_the_learner_acts_like_the_robot_it_trains():
    """head.select decides the edit objective's acting rule (TD target and V(s)); it is never set twice."""
    assert HeadConfig(type="edit", select="mean").objective_values()["head_objective"]["acting"] == "mean"
    assert HeadConfig(type="edit", select="critic").objective_values()["head_objective"]["acting"] == "best"
    assert "acting" not in HeadConfig(type="residual").objective_values()["head_objective"]
    with pytest.raises(ConfigError, match="head.select"):
        HeadConfig(type="edit", head_objective={"acting": "best"})
    values = HeadConfig(type="edit", select="mean", **SMALL).objective_values()
    obj = make_objective(ObjectiveConfig(**values))
    obj.update(batch())
    assert obj.inner.config.acting == "mean"


def test_head_init_from_a_learner_store_loads_the_trained_weights(tmp_path):
    obj = LearningObjective(ObjectiveSpec(type="edit", **SMALL))
    for i in range(3):
        obj.update(batch(seed=i))
    save_checkpoint(tmp_path / "checkpoints", 3, {"step": 3, "objective": obj.state_dict()})
    parts = robot_parts(HeadConfig(type="edit", init=str(tmp_path), **SMALL), DIMS)
    assert parts.head.version == 3 and parts.critic.version == 3
    for kind, module in (("head", parts.head), ("critic", parts.critic)):
        for name, value in obj.weights()[kind].items():
            np.testing.assert_array_equal(module.weights()[name], value)
    assert parts.head.selector is not None
    with pytest.raises(ConfigError, match="sizes"):  # another robot's sizes
        robot_parts(HeadConfig(type="edit", init=str(tmp_path), **SMALL), Dims(S + 1, F, H, A))
    with pytest.raises(ConfigError, match="learner store"):
        robot_parts(HeadConfig(type="edit", init=str(tmp_path / "nothing"), **SMALL), DIMS)
    # a single checkpoint file is verified against the sha256 beside it: flipped bytes never load
    (ckpt,) = (tmp_path / "checkpoints").glob("ckpt-*.pt")
    assert robot_parts(HeadConfig(type="edit", init=str(ckpt), **SMALL), DIMS).head.version == 3
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="sha256"):
        robot_parts(HeadConfig(type="edit", init=str(ckpt), **SMALL), DIMS)
    ckpt.with_name(ckpt.name + ".sha256").unlink()
    with pytest.raises(ConfigError, match="sha256"):
        robot_parts(HeadConfig(type="edit", init=str(ckpt), **SMALL), DIMS)


def test_learning_objective_resume_is_exact():
    a = LearningObjective(ObjectiveSpec(type="edit", **SMALL))
    a.update(batch(seed=0))
    b = LearningObjective(ObjectiveSpec(type="edit", **SMALL))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # as a checkpoint would (no tensors shared between a and b)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    ma, mb = a.update(batch(seed=1)), b.update(batch(seed=1))
    assert ma == mb


def test_time_reward_makes_the_value_minus_the_discounted_time_to_the_terminal():
    """reward_mode=time: r = -1 per valid tick; a terminal chunk of h ticks has target -(1 - g^h) / (1 - g)."""
    from tandem.policies.heads.critic import ChunkedCritic, CriticConfig

    critic = ChunkedCritic(CriticConfig(state_dim=S, feature_dim=F, horizon=H, action_dim=A, hidden=(32,), gamma=0.9))
    co = CriticObjective(critic, CriticObjectiveConfig(reward_mode="time", reward_scale=1.0))
    b = batch(8)
    b["done"][:] = True
    b["next_valid"][:] = False
    b["valid"][:] = True
    b["valid"][0, 2:] = False
    captured = {}
    original = critic.td_loss

    def spy(state, features, chunk, y, w):
        captured["y"] = y.detach().clone()
        return original(state, features, chunk, y, w)

    critic.td_loss = spy
    co.update(b)
    y = captured["y"].numpy()
    assert y[0] == pytest.approx(-(1 + 0.9))  # two valid ticks
    assert y[1:] == pytest.approx(np.full(7, -(1 - 0.9**H) / (1 - 0.9)))


def test_awr_term_pulls_the_edit_policy_toward_high_advantage_executed_chunks():
    """With the AWR term the head's mean edit moves toward the executed (human) chunk's edit."""
    torch.manual_seed(0)
    obj = LearningObjective(ObjectiveSpec(type="edit", critic={"hidden": [32, 32]},
                                          head={"hidden": [32, 32], "beta": 0.5},
                                          head_objective={"awr_weight": 5.0, "awr_beta": 1.0, "lr": 1e-3}))
    b = batch(64, seed=3)
    b["base"][:] = 0.0
    b["executed"][:] = 0.3  # every executed chunk edits the base by +0.3 (eps* = 0.6)
    b["valid"][:] = True
    first = obj.update(b)
    assert "head/awr_w" in first and "head/awr_log_p" in first
    for _ in range(150):
        last = obj.update(b)
    assert last["head/awr_log_p"] > first["head/awr_log_p"] + 0.5
    head = obj.inner.head
    with torch.no_grad():
        mean, _ = head.dist_params(torch.from_numpy(b["state"]), torch.from_numpy(b["features"]).float(),
                                   torch.from_numpy(b["base"]))
    edit = 0.5 * torch.tanh(mean)
    assert float((edit - 0.3).abs().mean()) < 0.1


def test_edit_objective_without_awr_reports_no_awr_metrics():
    from tandem.policies.heads.critic import ChunkedCritic, CriticConfig
    from tandem.policies.heads.networks import EditHead, EditHeadConfig

    dims = dict(state_dim=S, feature_dim=F, horizon=H, action_dim=A, hidden=(16,))
    co = CriticObjective(ChunkedCritic(CriticConfig(**dims)))
    obj = EditHeadObjective(EditHead(EditHeadConfig(**dims)), co, EditObjectiveConfig())
    assert not any(k.startswith("head/awr") for k in obj.update(batch()))


def _good_and_bad_chunks(n: int = 64) -> dict:
    """Half the chunks edit the base by +0.3 and earn 1 per tick, half by -0.3 and earn 0; every state looks
    the same, so only the advantage can tell the head which edit to make."""
    b = batch(n, seed=5)
    b["state"][:] = 0.0
    b["features"][:] = 0.0
    b["base"][:] = 0.0
    good = np.arange(n) % 2 == 0
    b["executed"][:] = np.where(good[:, None, None], 0.3, -0.3).astype(np.float32)
    b["reward"][:] = np.where(good[:, None], 1.0, 0.0).astype(np.float32)
    b["valid"][:] = True
    b["done"][:] = True  # terminals: the targets are the chunks' returns
    b["next_valid"][:] = False
    b["intervention"] = np.zeros((n, H), bool)
    return b


def _mean_edit_after_training(awr_beta: float) -> float:
    torch.manual_seed(0)
    obj = LearningObjective(ObjectiveSpec(type="edit", critic={"hidden": [32, 32], "lr": 3e-3},
                                          head={"hidden": [32, 32], "beta": 0.5},
                                          critic_objective={"warmup_steps": 150},
                                          head_objective={"q_weight": 0.0, "awr_weight": 1.0, "awr_beta": awr_beta,
                                                          "lr": 1e-3}))
    b = _good_and_bad_chunks()
    for _ in range(400):
        obj.update(b)
    head = obj.inner.head
    with torch.no_grad():
        mean, _ = head.dist_params(torch.from_numpy(b["state"]), torch.from_numpy(b["features"]).float(),
                                   torch.from_numpy(b["base"]))
    return float((0.5 * torch.tanh(mean)).mean())


def test_advantage_weighting_picks_the_better_edit_and_imitation_does_not():
    """The same data, the same head: weighted by the critic's advantage the edit moves toward the chunks
    that earned more; with every weight 1 (awr_beta huge: plain imitation) it stays between the two."""
    weighted = _mean_edit_after_training(awr_beta=0.1)
    imitation = _mean_edit_after_training(awr_beta=1e9)
    assert abs(imitation) < 0.08
    assert weighted > 0.15
