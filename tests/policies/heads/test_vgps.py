"""head=vgps (V-GPS): N base samples per chunk boundary from one batched call, the robot's critic picks one
through the learner's selection function, and the chosen sample is what runs and what the record holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tandem.core.errors import ConfigError
from tandem.hardware.metaworld_robot import TASK_INSTRUCTIONS
from tandem.policies.base import NUM_SAMPLES_KEY, BasePolicy, Chunk, infer_requests, request_samples
from tandem.policies.heads.build import robot_parts
from tandem.policies.heads.config import Dims, HeadConfig
from tandem.policies.heads.critic import ChunkedCritic, CriticConfig
from tandem.policies.heads.select import best_of_candidates
from tandem.policies.scripted import ScriptedPolicy, ScriptedPolicyConfig
from tandem.policies.tiny_vla.model import TinyVLA, TinyVLAModelConfig, save_checkpoint
from tandem.policies.tiny_vla.policy import TinyVLAPolicy, TinyVLAPolicyConfig
from tandem.policies.tiny_vla.tokenizer import build_tokenizer
from tandem.runtime.build import head_consumers
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend, SampleRequests
from tandem.value.objectives.dqc import ExpectileCriticObjective
from tandem.value.objectives.learning import LearningObjective, ObjectiveSpec

S, F, H, A = 3, 0, 4, 2
DIMS = Dims(S, F, H, A)
CRITIC = {"hidden": [32, 32], "ensemble_size": 2, "aggregation": "min_pair"}
REACH = TASK_INSTRUCTIONS["reach-v3"]


class CountingPolicy(BasePolicy):
    """Sample i of a batch is the constant chunk 0.1 * i (so sample k is known); counts infer_batch calls."""

    name = "counting"
    chunk_length, action_dim, feature_dim = H, A, 0

    def __init__(self) -> None:
        self.calls = 0
        self.sizes: list[int] = []

    def infer(self, observation: dict, task: str) -> Chunk:
        raise AssertionError("V-GPS must sample through one infer_batch call")

    def infer_batch(self, observations: list[dict], tasks: list[str]) -> list[Chunk]:
        assert all(NUM_SAMPLES_KEY not in o for o in observations)  # the policy never sees the request key
        self.calls += 1
        self.sizes.append(len(observations))
        return [Chunk(actions=np.full((H, A), 0.1 * i, np.float32)) for i in range(len(observations))]


def _obs(seed: int = 0) -> dict[str, np.ndarray]:
    return {"observation.state": np.random.default_rng(seed).normal(size=S).astype(np.float32)}


def _critic_preferring(value: float, seed: int = 0) -> ChunkedCritic:
    """A critic (sizes DIMS) trained so that the constant chunk ``value`` scores highest among 0, 0.1, ..., 0.7."""
    torch.manual_seed(seed)
    critic = ChunkedCritic(CriticConfig(state_dim=S, feature_dim=F, horizon=H, action_dim=A, **CRITIC))
    levels = torch.arange(8, dtype=torch.float32) * 0.1
    opt = torch.optim.Adam(critic.online.parameters(), lr=1e-2)
    for _ in range(300):
        state = torch.randn(64, S)
        idx = torch.randint(0, 8, (64,))
        chunk = levels[idx].view(-1, 1, 1).expand(64, H, A).contiguous()
        y = -(levels[idx] - value).abs() * 10
        loss, _ = critic.td_loss(state, torch.zeros(64, F), chunk, y, torch.ones(64))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return critic


def _controller(num_samples: int, critic_weights: ChunkedCritic | None) -> tuple[Controller, CountingPolicy, object]:
    parts = robot_parts(HeadConfig(type="vgps", critic=CRITIC, num_samples=num_samples), DIMS)
    consumers = head_consumers(parts)
    assert set(consumers) == {"critic"}  # no head network: only the critic comes by the weight push
    if critic_weights is not None:  # the weight push's path: check, copy, install at a boundary
        consumer = consumers["critic"]
        consumer.load_weights(consumer.prepare_weights(critic_weights.weights(), 5), 5)
    policy = CountingPolicy()
    scheduler = ChunkScheduler(SampleRequests(InlineBackend(policy), num_samples), SchedulerConfig(blend_ticks=0),
                               lookahead=H, synchronous=True)
    controller = Controller(scheduler, H, hold=lambda: np.zeros(A, np.float32), head=parts.head)
    return controller, policy, parts


def test_num_samples_come_from_one_batched_call_and_differ_for_the_scripted_base():
    policy = CountingPolicy()
    chunk = infer_requests(policy, [request_samples(_obs(), 8)], [REACH])[0]
    assert policy.calls == 1 and policy.sizes == [8] and chunk.samples.shape == (8, H, A)
    np.testing.assert_array_equal(chunk.actions, chunk.samples[0])
    plain = infer_requests(policy, [_obs()], [REACH])[0]  # a plain request: one chunk, no samples
    assert plain.samples is None and policy.sizes[-1] == 1

    scripted = ScriptedPolicy(ScriptedPolicyConfig(task="reach-v3", chunk_length=10, noise_std=0.3))
    obs = {"observation.state": np.zeros(39, np.float32)}
    samples = infer_requests(scripted, [request_samples(obs, 8)], [REACH])[0].samples
    assert samples.shape == (8, 10, 4)
    assert min(np.abs(samples[i] - samples[j]).max() for i in range(8) for j in range(i)) > 1e-3  # all differ


def test_num_samples_differ_for_the_tiny_vla(tmp_path):
    tok = build_tokenizer(TASK_INSTRUCTIONS.values(), max_length=16)
    cfg = TinyVLAModelConfig(image_size=32, dim=32, feature_dim=32, chunk_length=6, head_hidden=64, head_blocks=2,
                             vocab_size=len(tok), image_keys=[],
                             vision={"model_type": "vit", "patch_size": 16, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "intermediate_size": 64},
                             text={"model_type": "bert", "num_hidden_layers": 1, "num_attention_heads": 2,
                                   "intermediate_size": 64})
    torch.manual_seed(0)
    save_checkpoint(TinyVLA(cfg), tok, tmp_path / "tiny", {"version": 1})
    from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig

    policy = TinyVLAPolicy(TinyVLAPolicyConfig(path=str(tmp_path / "tiny"), device="cpu"),
                           MetaWorldRobot(MetaWorldRobotConfig(cameras=[])))
    calls = []
    inner = policy.infer_batch
    policy.infer_batch = lambda o, t: calls.append(len(o)) or inner(o, t)  # type: ignore[method-assign]
    obs = {"observation.state": np.zeros(39, np.float32)}
    chunk = infer_requests(policy, [request_samples(obs, 5)], [REACH])[0]
    assert calls == [5] and chunk.samples.shape == (5, 6, 4)
    assert min(np.abs(chunk.samples[i] - chunk.samples[j]).max() for i in range(5) for j in range(i)) > 1e-4


def test_the_robot_runs_the_sample_the_critic_prefers_and_records_it_as_the_base():
    controller, policy, parts = _controller(8, _critic_preferring(0.5))
    obs = _obs()
    controller.reset(obs, REACH)
    for tick in range(2 * H):
        d = controller.decide(obs, REACH, tick)
        np.testing.assert_allclose(d.action, np.full(A, 0.5), atol=1e-6)  # sample 5, not sample 0
        np.testing.assert_allclose(d.base_action, np.full(A, 0.5), atol=1e-6)  # the record's base is what ran
        np.testing.assert_array_equal(d.head_action, np.zeros(A))
        assert d.head_version == 5  # the critic's version is what the choice depends on
    assert parts.head.last_choice == 5 and controller.sample_stats["chosen"] == 2
    assert all(size == 8 for size in policy.sizes)  # every request: one batched call of N samples


def test_without_critic_weights_or_with_one_sample_the_base_runs():
    for n, weights in ((8, None), (1, _critic_preferring(0.5))):
        controller, _, _ = _controller(n, weights)
        obs = _obs()
        controller.reset(obs, REACH)
        actions = [controller.decide(obs, REACH, tick).action for tick in range(H)]
        np.testing.assert_allclose(actions, np.zeros((H, A)), atol=1e-6)  # sample 0: the base's own chunk
        assert controller.sample_stats["chosen"] == 0


def test_robot_and_learner_choose_the_same_sample_for_the_same_inputs_and_weights():
    rng = np.random.default_rng(0)
    learner = LearningObjective(ObjectiveSpec(type="vgps", critic=CRITIC, critic_objective={"reward_mode": "time"}))
    b = 16
    batch = {"state": rng.normal(size=(b, S)).astype(np.float32), "features": np.zeros((b, F), np.float32),
             "base": rng.uniform(-1, 1, (b, H, A)).astype(np.float32), "reward": np.zeros((b, H), np.float32),
             "valid": np.ones((b, H), bool), "done": np.zeros(b, bool), "next_valid": np.ones(b, bool),
             "next_state": rng.normal(size=(b, S)).astype(np.float32), "next_features": np.zeros((b, F), np.float32),
             "next_base": rng.uniform(-1, 1, (b, H, A)).astype(np.float32)}
    batch["executed"] = batch["base"]
    for _ in range(20):
        metrics = learner.update(batch)
    assert isinstance(learner.inner, ExpectileCriticObjective) and "critic/value_loss" in metrics
    published = learner.weights()
    assert set(published) == {"critic"}  # no head network
    parts = robot_parts(HeadConfig(type="vgps", critic=CRITIC, num_samples=16), DIMS)
    consumer = head_consumers(parts)["critic"]
    consumer.load_weights(consumer.prepare_weights(published["critic"], 3), 3)
    agree = 0
    for seed in range(20):
        obs = _obs(seed)
        samples = rng.uniform(-1, 1, (16, H, A)).astype(np.float32)
        robot_index = parts.head.choose(obs, np.zeros(0, np.float16), samples)
        critic = learner.inner.critic
        with torch.no_grad():
            _, index, _ = best_of_candidates(critic, torch.from_numpy(obs["observation.state"])[None],
                                             torch.zeros(1, F), torch.from_numpy(samples)[None])
        assert robot_index == int(index[0])
        agree += robot_index != 0
    assert agree > 0  # not all ties at sample 0


def test_vgps_settings_are_checked_at_start():
    with pytest.raises(ConfigError, match="head.num_samples"):
        HeadConfig(type="vgps", num_samples=0)
    with pytest.raises(ConfigError, match="head.select"):
        HeadConfig(type="vgps", select="mean")
    with pytest.raises(ConfigError, match="head.head"):
        HeadConfig(type="vgps", head={"beta": 0.1})
    with pytest.raises(ConfigError, match="partial_horizon"):
        HeadConfig(type="vgps", critic={"partial_horizon": 2})
    with pytest.raises(ConfigError, match="head.type"):
        HeadConfig(type="vgpss")
    values = HeadConfig(type="vgps", critic=CRITIC).objective_values()
    assert values["type"] == "vgps" and not values["head"] and not values["head_objective"]
    LearningObjective(ObjectiveSpec(type="vgps", critic=CRITIC))  # the learner accepts what the robot sends
