"""The tiny VLA: local tokenizer, network shapes, flow matching, checkpoints, the policy contract, load errors."""

import json

import numpy as np
import pytest
import torch

from tandem.hardware.metaworld_robot import TASK_INSTRUCTIONS, MetaWorldRobot, MetaWorldRobotConfig
from tandem.policies.base import PolicyLoadError
from tandem.policies.tiny_vla.model import TinyVLA, TinyVLAModelConfig, load_checkpoint, save_checkpoint
from tandem.policies.tiny_vla.policy import TinyVLAPolicy, TinyVLAPolicyConfig
from tandem.policies.tiny_vla.tokenizer import build_tokenizer, encode, load_tokenizer

IMG = "observation.images.corner"
PUSH = TASK_INSTRUCTIONS["push-v3"]
REACH = TASK_INSTRUCTIONS["reach-v3"]


def tiny_cfg(tok, **kw):
    base = dict(image_size=32, dim=32, feature_dim=32, chunk_length=6, head_hidden=64, head_blocks=2, vocab_size=len(tok),
                vision={"model_type": "vit", "patch_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "intermediate_size": 64},
                text={"model_type": "bert", "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64})
    return TinyVLAModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(TASK_INSTRUCTIONS.values(), max_length=16)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok):
    torch.manual_seed(0)
    model = TinyVLA(tiny_cfg(tok))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(model, tok, path, {"version": 7})
    return path


def robot(**kw):
    return MetaWorldRobot(MetaWorldRobotConfig(image_size=32, **kw))


def obs(seed=0, size=32):
    rng = np.random.default_rng(seed)
    return {"observation.state": rng.normal(size=39).astype(np.float32),
            IMG: rng.integers(0, 255, (size, size, 3), dtype=np.uint8)}


def test_tokenizer_is_local_and_round_trips(tok, tmp_path):
    ids, mask = encode(tok, [PUSH, "push the UNSEEN-word"], 16)
    assert ids.shape == (2, 16) and ids[0, 0] == tok.cls_token_id
    assert mask[0].sum() == 1 + len(PUSH.split()) and (ids[0, mask[0] == 0] == tok.pad_token_id).all()
    assert tok.unk_token_id in ids[1]
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert (encode(again, [PUSH], 16)[0] == ids[:1]).all()


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads only contend
    yield
    torch.set_num_threads(n)


def test_network_shapes_and_flow_matching_learns_a_chunk(tok, one_thread):
    torch.manual_seed(0)
    model = TinyVLA(tiny_cfg(tok))
    b = 8
    images = torch.randint(0, 255, (b, 1, 32, 32, 3), dtype=torch.uint8)
    state = torch.randn(b, 39)
    ids, mask = (torch.from_numpy(x) for x in encode(tok, [PUSH] * 4 + [REACH] * 4, 16))
    feats = model.features(images, state, model.encode_text(ids, mask))
    assert feats.shape == (b, 32)
    # learning: state + language only (the vision path is exercised above), so it runs in ~2 s
    model = TinyVLA(tiny_cfg(tok, image_keys=[]))
    no_images = torch.zeros((b, 0, 1, 1, 3), dtype=torch.uint8)
    target = torch.linspace(-0.8, 0.8, 6 * 4).reshape(1, 6, 4).repeat(b, 1, 1)
    target[4:] *= -1  # the instruction decides the chunk
    valid = torch.ones(b, 6, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = model.flow_loss(model.features(no_images, state, model.encode_text(ids, mask)), target, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-10:]) < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        out = model.sample(model.features(no_images, state, model.encode_text(ids, mask)), steps=10)
    assert out.shape == (b, 6, 4)
    corr = torch.corrcoef(torch.stack([out.flatten(), target.flatten()]))[0, 1]
    assert corr > 0.8, "sampled chunks follow the instruction-dependent target"


def test_padding_is_masked_out_of_the_loss(tok):
    torch.manual_seed(0)
    model = TinyVLA(tiny_cfg(tok))
    feats = torch.randn(2, 32)
    a = torch.zeros(2, 6, 4)
    none = torch.zeros(2, 6, dtype=torch.bool)
    assert float(model.flow_loss(feats, a, none).detach()) == 0.0  # nothing past the episode's end is learned
    some = none.clone()
    some[:, :3] = True
    full = model.flow_loss(feats, a, torch.ones_like(none), generator=torch.Generator().manual_seed(1))
    part = model.flow_loss(feats, a, some, generator=torch.Generator().manual_seed(1))
    assert float(part.detach()) > 0 and not torch.allclose(full, part)


def test_policy_contract_batching_and_checkpoint_round_trip(ckpt):
    p = TinyVLAPolicy(TinyVLAPolicyConfig(path=str(ckpt), device="cpu", seed=3), robot())
    assert (p.name, p.chunk_length, p.action_dim, p.feature_dim, p.version) == ("tiny_vla", 6, 4, 32, 7)
    c = p.infer(obs(0), PUSH)
    assert c.actions.shape == (6, 4) and c.actions.dtype == np.float32
    assert (np.abs(c.actions) <= 1).all() and c.features.shape == (32,) and c.features.dtype == np.float16
    assert c.version == 7 and c.policy == "tiny_vla" and c.infer_s > 0
    # features are the deterministic observation embedding (sampling noise does not enter them)
    batch = p.infer_batch([obs(0), obs(1)], [PUSH, REACH])
    assert np.array_equal(batch[0].features, c.features)
    assert not np.array_equal(batch[0].features, batch[1].features)
    # same seed, same chunk: checkpoints reload exactly
    q = TinyVLAPolicy(TinyVLAPolicyConfig(path=str(ckpt), device="cpu", seed=3), robot())
    assert np.allclose(q.infer(obs(0), PUSH).actions, c.actions, atol=1e-6)
    model, tok, meta = load_checkpoint(ckpt)
    assert meta["version"] == 7 and not model.training


def test_load_errors_are_clear(ckpt, tmp_path):
    with pytest.raises(PolicyLoadError, match="does not exist"):
        TinyVLAPolicy(TinyVLAPolicyConfig(path=str(tmp_path / "missing")), robot())
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyLoadError, match="has no config.json"):
        load_checkpoint(tmp_path / "empty")
    import shutil

    bad = shutil.copytree(ckpt, tmp_path / "corrupt")
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[:500])
    with pytest.raises(PolicyLoadError, match="corrupt"):
        load_checkpoint(bad)
    bad_cfg = shutil.copytree(ckpt, tmp_path / "badcfg")
    doc = json.loads((bad_cfg / "config.json").read_text())
    doc["model"]["dim"] = 48  # weights no longer match the architecture
    (bad_cfg / "config.json").write_text(json.dumps(doc))
    with pytest.raises(PolicyLoadError, match="does not match"):
        load_checkpoint(bad_cfg)
    (bad_cfg / "config.json").write_text("{not json")
    with pytest.raises(PolicyLoadError, match="bad config.json"):
        load_checkpoint(bad_cfg)


def test_wrong_robot_fails_at_start(ckpt, tok, tmp_path):
    with pytest.raises(PolicyLoadError, match="needs cameras"):
        TinyVLAPolicy(TinyVLAPolicyConfig(path=str(ckpt)), robot(cameras=[]))
    with pytest.raises(PolicyLoadError, match="image_size=32"):
        TinyVLAPolicy(TinyVLAPolicyConfig(path=str(ckpt)), MetaWorldRobot(MetaWorldRobotConfig(image_size=64)))
    wrong = tmp_path / "a3"
    save_checkpoint(TinyVLA(tiny_cfg(tok, action_dim=3)), tok, wrong)
    with pytest.raises(PolicyLoadError, match="outputs 3-D actions but the robot takes 4-D"):
        TinyVLAPolicy(TinyVLAPolicyConfig(path=str(wrong)), robot())
    nan = tmp_path / "nan"
    m = TinyVLA(tiny_cfg(tok))
    with torch.no_grad():
        m.expert.out.weight[0, 0] = float("nan")
    save_checkpoint(m, tok, nan)
    with pytest.raises(PolicyLoadError, match="NaN"):
        load_checkpoint(nan)
