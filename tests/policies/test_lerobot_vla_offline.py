"""SmolVLA, pi0 and pi0.5 from local directories with the network off (HF_HUB_OFFLINE=1,
TRANSFORMERS_OFFLINE=1): a tiny random-weight SmolVLA built here with lerobot's own classes, saved with
save_pretrained and naming its VLM by a hub id in no cache; ``tandem prepare-policy`` copying it and its
backbone's files out of a hub cache laid out here; the prepared directory run by a ``tandem run`` session
with the policy in its worker process. pi0/pi0.5: their tokenizer comes from ``DIR/backbone`` and, on the
stock transformers installed here, loading stops with what to install instead of building a 3B model."""

import json
import shutil

import numpy as np
import pytest
import torch
from vla_testkit import (
    IMAGE,
    PALIGEMMA_NAME,
    SMOLVLM_NAME,
    STATE,
    TEXT_HIDDEN,
    VOCAB,
    add_to_hub_cache,
    save_pi_config,
    save_smolvlm_backbone,
    save_tiny_smolvla,
)

from tandem.cli import main as cli_main
from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig
from tandem.policies.base import PolicyLoadError
from tandem.policies.lerobot_adapter import (
    LeRobotPolicy,
    LeRobotPolicyConfig,
    check_openpi_transformers,
    load_processors,
)
from tandem.policies.tiny_vla.rtc import make_request
from tandem.runtime.config import compose_run
from tandem.runtime.session import Session

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def smolvla_dir(tmp_path_factory):
    return save_tiny_smolvla(tmp_path_factory.mktemp("vla") / "smolvla")


def robot(**kw):
    return MetaWorldRobot(MetaWorldRobotConfig(realtime=False, **kw))


def observation(seed=0):
    rng = np.random.default_rng(seed)
    return {STATE: rng.normal(size=39).astype(np.float32), IMAGE: rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)}


def openpi_transformers():
    try:
        check_openpi_transformers("pi0")
    except PolicyLoadError:
        return False
    return True


def test_smolvla_loads_from_its_directory_offline(smolvla_dir):
    saved = json.loads((smolvla_dir / "config.json").read_text())
    assert saved["vlm_model_name"] == SMOLVLM_NAME, "the directory names its VLM by hub id, as a real one does"
    p = LeRobotPolicy(LeRobotPolicyConfig(path=str(smolvla_dir), device="cpu"), robot())
    assert p.policy.config.vlm_model_name == str(smolvla_dir / "backbone")
    assert p.policy.config.load_vlm_weights is False, "the VLM's weights come from model.safetensors"
    assert (p.name, p.chunk_length, p.action_dim, p.feature_dim) == ("lerobot-smolvla", 12, 4, TEXT_HIDDEN)
    a = p.infer(observation(0), "push the puck to the goal")
    assert a.actions.shape == (12, 4) and a.actions.dtype == np.float32 and np.isfinite(a.actions).all()
    assert a.features.shape == (TEXT_HIDDEN,) and np.isfinite(a.features).all()
    b = p.infer(observation(0), "open the drawer")
    assert not np.allclose(a.features, b.features), "the instruction reaches the VLM through the local tokenizer"
    c = p.infer(observation(1), "push the puck to the goal")
    assert not np.allclose(a.features, c.features), "the image and state reach the VLM"


def test_smolvla_without_its_backbone_names_the_fix(smolvla_dir, tmp_path):
    bare = shutil.copytree(smolvla_dir, tmp_path / "bare", ignore=shutil.ignore_patterns("backbone"))
    with pytest.raises(PolicyLoadError, match=f"(?s){SMOLVLM_NAME}.*no backbone/.*tandem prepare-policy"):
        LeRobotPolicy(LeRobotPolicyConfig(path=str(bare), device="cpu"), robot())


@pytest.fixture(scope="module")
def hub_cache(smolvla_dir, tmp_path_factory):
    """The hub cache of a machine that once ran the policy: the policy repository (no backbone/) and the
    VLM's, whose weights prepare-policy must not copy."""
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "hub"
    bare = shutil.copytree(smolvla_dir, tmp / "policy", ignore=shutil.ignore_patterns("backbone"))
    add_to_hub_cache(cache, "tandem-test/tiny-smolvla", bare, revision="a" * 40)
    vlm = save_smolvlm_backbone(tmp / "vlm")
    (vlm / "model.safetensors").write_bytes(b"weights that prepare-policy never copies")
    add_to_hub_cache(cache, SMOLVLM_NAME, vlm, revision="b" * 40)
    return cache


@pytest.fixture(scope="module")
def prepared(hub_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "smolvla"
    assert cli_main(["prepare-policy", "tandem-test/tiny-smolvla", "--out", str(out), "--cache-dir", str(hub_cache)]) == 0
    return out


def test_prepare_policy_copies_the_policy_and_the_backbone_files_from_the_cache(prepared, hub_cache, capsys):
    manifest = json.loads((prepared / "tandem_prepared.json").read_text())
    assert (manifest["source_revision"], manifest["backbone"], manifest["backbone_revision"]) == (
        "a" * 40, SMOLVLM_NAME, "b" * 40)
    snapshot = hub_cache / "models--tandem-test--tiny-smolvla" / "snapshots" / ("a" * 40)
    assert (prepared / "model.safetensors").read_bytes() == (snapshot / "model.safetensors").read_bytes()
    assert json.loads((prepared / "config.json").read_text())["vlm_model_name"] == SMOLVLM_NAME, "unchanged"
    for name in ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.json"):
        assert (prepared / "backbone" / name).is_file(), name
    assert not (prepared / "backbone" / "model.safetensors").exists(), "never the backbone's weights"
    # a second run refuses to mix into a full directory
    assert cli_main(["prepare-policy", "tandem-test/tiny-smolvla", "--out", str(prepared),
                     "--cache-dir", str(hub_cache)]) == 2
    assert "--out" in capsys.readouterr().err


def test_prepare_policy_from_a_local_training_output_with_the_backbone_from_the_cache(
        smolvla_dir, hub_cache, tmp_path):
    trained = shutil.copytree(smolvla_dir, tmp_path / "pretrained_model", ignore=shutil.ignore_patterns("backbone"))
    out = tmp_path / "out"
    assert cli_main(["prepare-policy", str(trained), "--out", str(out), "--cache-dir", str(hub_cache)]) == 0
    manifest = json.loads((out / "tandem_prepared.json").read_text())
    assert (manifest["source_revision"], manifest["backbone"]) == ("local", SMOLVLM_NAME)
    p = LeRobotPolicy(LeRobotPolicyConfig(path=str(out), device="cpu"), robot())
    assert p.infer(observation(0), "reach the goal").actions.shape == (12, 4)


def test_prepared_smolvla_runs_in_the_worker_process_with_rtc(prepared, tmp_path):
    """A tandem run session, SmolVLA in its worker process, splicing by lerobot's RTC under a 2-tick delay."""
    summary = Session(compose_run([
        "policy=lerobot", f"policy.path={prepared}", "policy.device=cpu", "session.backend=process",
        "robot.realtime=false", "robot.task=reach-v3", "session.episodes=1", "robot.max_episode_steps=25",
        "session.horizon=4", "scheduler.splice=rtc", "scheduler.sim_delay_ticks=2",
        f"session.run_dir={tmp_path / 'run'}", "record.enabled=false",
    ])).run()
    ep = summary.episodes[0]
    assert summary.policy == "lerobot-smolvla"
    assert ep["steps"] == 25 and ep["starved_ticks"] == 0 and ep["scheduler"]["chunks"] >= 3
    assert ep["scheduler"]["rtc_requests"] >= 2, ep["scheduler"]
    assert ep["scheduler"]["rtc_fallbacks"] == 0, "every chunk honoured its prefix (no cross-fade fallback)"


def test_smolvla_rtc_inpaints_the_committed_prefix(smolvla_dir):
    """lerobot's RTC through the adapter: the first d actions are the prefix, the guided ones pulled to it."""
    p = LeRobotPolicy(LeRobotPolicyConfig(path=str(smolvla_dir), device="cpu"), robot())
    obs, d, n = observation(0), 2, 8
    prefix = np.tile(np.array([0.5, -0.5, 0.3, -0.3], np.float32), (n, 1))
    torch.manual_seed(1)
    free = p.infer(obs, "push the puck").actions
    torch.manual_seed(1)  # the same noise: only the guidance differs
    guided = p.infer(make_request(obs, prefix, d), "push the puck").actions
    assert guided.shape == (12, 4)
    np.testing.assert_array_equal(guided[:d], prefix[:d])
    gap_free, gap_guided = (np.abs(a[d:n // 2 + d] - prefix[d:n // 2 + d]).mean() for a in (free, guided))
    assert gap_guided < 0.6 * gap_free, (gap_guided, gap_free)
    assert not np.allclose(free[:d], prefix[:d])


def test_prepare_policy_names_a_repository_missing_from_the_cache(tmp_path, capsys):
    assert cli_main(["prepare-policy", "tandem-test/absent", "--out", str(tmp_path / "o"),
                     "--cache-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "tandem-test/absent" in err and "nothing is downloaded" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_pi_tokenizer_from_the_local_backbone(kind, tmp_path):
    from lerobot.configs.policies import PreTrainedConfig

    d = save_pi_config(kind, tmp_path / kind)
    assert PALIGEMMA_NAME in (d / "policy_preprocessor.json").read_text()
    cfg = PreTrainedConfig.from_pretrained(str(d), local_files_only=True)
    pre, _ = load_processors(d, cfg, "cpu")
    batch = pre({STATE: torch.zeros(39), IMAGE: torch.zeros(3, 96, 96), "task": "push the puck"})
    tokens = batch["observation.language.tokens"][0].tolist()
    # the tiny word-level vocabulary's ids (pi0.5 wraps the task in its own prompt: "Task: push the puck, ...")
    pair = [VOCAB["push"], VOCAB["the"]]
    assert len(tokens) == 8 and any(tokens[i:i + 2] == pair for i in range(7)), tokens
    # the same directory without backbone/: the hardcoded PaliGemma name, absent offline, and the fix
    shutil.rmtree(d / "backbone")
    with pytest.raises(PolicyLoadError, match=f"(?s)pre/post-processors.*{PALIGEMMA_NAME}.*tandem prepare-policy"):
        LeRobotPolicy(LeRobotPolicyConfig(path=str(d), device="cpu"), robot())


@pytest.mark.skipif(openpi_transformers(), reason="transformers here is lerobot's openpi build: pi0 can be built")
@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_pi_on_stock_transformers_stops_before_building_the_model(kind, tmp_path):
    d = save_pi_config(kind, tmp_path / kind)
    with pytest.raises(PolicyLoadError, match=f"lerobot's {kind} needs the transformers build of lerobot's 'pi' extra"):
        LeRobotPolicy(LeRobotPolicyConfig(path=str(d), device="cpu"), robot())
