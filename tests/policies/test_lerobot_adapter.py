"""lerobot policies through the adapter: tiny randomly initialised ACT and Diffusion, built and saved
here with lerobot's own classes and processors (nothing downloaded), loaded by path, run in the loop."""

import os
import shutil

import numpy as np
import pytest
import torch

from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig
from tandem.policies.base import PolicyLoadError
from tandem.policies.lerobot_adapter import LeRobotPolicy, LeRobotPolicyConfig
from tandem.runtime.config import compose_run
from tandem.runtime.session import Session

STATE, IMAGE = "observation.state", "observation.images.corner"


def _features(image_key=IMAGE, action_dim=4):
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {STATE: PolicyFeature(FeatureType.STATE, (39,)), image_key: PolicyFeature(FeatureType.VISUAL, (3, 96, 96))}
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}


def _stats(image_key=IMAGE, action_dim=4):
    def s(shape, mean=0.0, std=1.0):
        return {"mean": torch.full(shape, mean), "std": torch.full(shape, std),
                "min": torch.full(shape, mean - 2 * std), "max": torch.full(shape, mean + 2 * std)}

    return {STATE: s((39,), 0.2, 0.5), "action": s((action_dim,), 0.0, 0.5), image_key: s((3, 1, 1), 0.5, 0.25)}


def save_tiny(kind, root, image_key=IMAGE, action_dim=4):
    """Build a tiny random lerobot policy of ``kind`` and save it (+ processors) into ``root``."""
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    torch.manual_seed(0)
    inputs, outputs = _features(image_key, action_dim)
    if kind == "act":
        from lerobot.policies.act.configuration_act import ACTConfig

        cfg = ACTConfig(input_features=inputs, output_features=outputs, chunk_size=12, n_action_steps=12,
                        dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1,
                        n_vae_encoder_layers=1, latent_dim=8, pretrained_backbone_weights=None, device="cpu")
    else:
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

        cfg = DiffusionConfig(input_features=inputs, output_features=outputs, n_obs_steps=2, horizon=16,
                              n_action_steps=8, down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=16,
                              spatial_softmax_num_keypoints=8, num_inference_steps=3, crop_shape=None, device="cpu")
    policy = get_policy_class(kind)(cfg)
    pre, post = make_pre_post_processors(cfg, dataset_stats=_stats(image_key, action_dim))
    for obj in (policy, pre, post):
        obj.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def act_dir(tmp_path_factory):
    return save_tiny("act", tmp_path_factory.mktemp("act"))


@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory):
    return save_tiny("diffusion", tmp_path_factory.mktemp("diffusion"))


def robot(**kw):
    return MetaWorldRobot(MetaWorldRobotConfig(realtime=False, **kw))


def observation(seed=0):
    rng = np.random.default_rng(seed)
    return {STATE: rng.normal(size=39).astype(np.float32), IMAGE: rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)}


def test_act_chunk_and_encoder_features(act_dir, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    p = LeRobotPolicy(LeRobotPolicyConfig(path=str(act_dir), device="cpu"), robot())
    assert os.environ["HF_HUB_OFFLINE"] == "1", "loading a policy never downloads (a missing file is an error)"
    assert (p.name, p.chunk_length, p.action_dim, p.feature_dim) == ("lerobot-act", 12, 4, 32)
    a, b = p.infer(observation(0), "push the puck to the goal"), p.infer(observation(1), "push the puck to the goal")
    assert a.actions.shape == (12, 4) and a.actions.dtype == np.float32 and np.isfinite(a.actions).all()
    assert a.features.shape == (32,) and a.features.dtype == np.float16
    assert not np.allclose(a.features, b.features), "features depend on the observation"
    assert not np.allclose(a.actions, b.actions)
    assert a.infer_s > 0


def test_diffusion_chunk_and_global_conditioning_features(diffusion_dir):
    p = LeRobotPolicy(LeRobotPolicyConfig(path=str(diffusion_dir), device="cpu"), robot())
    c = p.infer(observation(0), "push")
    # n_action_steps actions; features = global_cond = n_obs_steps x (state 39 + 8 keypoints x 2)
    assert c.actions.shape == (8, 4) and np.isfinite(c.actions).all()
    assert p.feature_dim == 2 * (39 + 16) and c.features.shape == (p.feature_dim,)
    p.reset()
    assert LeRobotPolicy(LeRobotPolicyConfig(path=str(diffusion_dir), device="cpu", n_action_steps=4),
                         robot()).infer(observation(0), "push").actions.shape == (4, 4)


def test_single_camera_with_another_name_is_mapped(tmp_path):
    d = save_tiny("act", tmp_path / "top", image_key="observation.images.top")
    p = LeRobotPolicy(LeRobotPolicyConfig(path=str(d), device="cpu"), robot())
    assert p.infer(observation(), "push").actions.shape == (12, 4)


def run_session(overrides):
    cfg = compose_run(["policy=lerobot", "robot.realtime=false", "robot.task=reach-v3", "session.episodes=1",
                       "robot.max_episode_steps=25", "policy.device=cpu", *overrides])
    return Session(cfg).run()


def test_act_runs_in_the_loop_through_the_worker_process(act_dir, tmp_path):
    summary = run_session([f"policy.path={act_dir}", "session.backend=process", f"session.run_dir={tmp_path}"])
    ep = summary.episodes[0]
    assert summary.policy == "lerobot-act"
    assert ep["steps"] == 25 and ep["starved_ticks"] == 0
    assert ep["scheduler"]["chunks"] >= 2


def test_diffusion_runs_in_the_loop(diffusion_dir, tmp_path):
    summary = run_session([f"policy.path={diffusion_dir}", "session.backend=inline", "session.horizon=4"])
    ep = summary.episodes[0]
    assert ep["steps"] == 25 and ep["starved_ticks"] == 0 and ep["scheduler"]["chunks"] >= 3


def test_missing_corrupt_and_wrong_action_size_fail_at_start(act_dir, tmp_path):
    with pytest.raises(PolicyLoadError, match="does not exist"):
        LeRobotPolicy(LeRobotPolicyConfig(path=str(tmp_path / "nope")), robot())
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyLoadError, match="no config.json"):
        LeRobotPolicy(LeRobotPolicyConfig(path=str(tmp_path / "empty")), robot())
    bad = shutil.copytree(act_dir, tmp_path / "corrupt")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1000])
    with pytest.raises(PolicyLoadError, match="cannot load the act weights"):
        LeRobotPolicy(LeRobotPolicyConfig(path=str(bad), device="cpu"), robot())
    wrong = save_tiny("act", tmp_path / "a3", action_dim=3)
    with pytest.raises(PolicyLoadError, match="outputs 3-D actions but the robot takes 4-D"):
        LeRobotPolicy(LeRobotPolicyConfig(path=str(wrong), device="cpu"), robot())
    with pytest.raises(PolicyLoadError, match="needs image"):
        LeRobotPolicy(LeRobotPolicyConfig(path=str(act_dir), device="cpu"), robot(cameras=[]))


def test_worker_reports_a_bad_policy_dir_at_session_start(tmp_path):
    with pytest.raises(PolicyLoadError, match="failed to start.*does not exist"):
        run_session([f"policy.path={tmp_path / 'missing'}", "session.backend=process"])
