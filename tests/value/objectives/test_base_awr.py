"""``base_awr``: the advantage-weighted update of the tiny VLA base (ALOE), its DAgger (w = 1) and AWR variants.

A tiny state-only VLA is built and saved locally. Its data: every state appears with a good chunk
(every action +0.6, reward 1 per tick) and a bad one (every action -0.6, reward 0), each ending the
episode, so Q(s, good) > Q(s, bad) and the advantage-weighted update must prefer the good chunk while
imitating everything (w = 1) learns their average.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tandem.core.errors import ConfigError
from tandem.hardware.metaworld_robot import TASK_INSTRUCTIONS
from tandem.policies.tiny_vla.model import TinyVLA, TinyVLAModelConfig, load_checkpoint, save_checkpoint
from tandem.policies.tiny_vla.tokenizer import build_tokenizer
from tandem.value.objectives.base import ObjectiveConfig, make_objective
from tandem.value.objectives.base_awr import BaseAWRConfig, BaseAWRObjective, decode_jpeg_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S, F, H, A = 4, 3, 5, 2
TASK = TASK_INSTRUCTIONS["reach-v3"]
GOOD, BAD = 0.6, -0.6


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = build_tokenizer(TASK_INSTRUCTIONS.values(), max_length=16)
    torch.manual_seed(0)
    cfg = TinyVLAModelConfig(
        state_dim=S, action_dim=A, chunk_length=H, image_keys=[], dim=16, feature_dim=16, head_hidden=64,
        head_blocks=1, vocab_size=len(tok), flow_steps=4,
        text={"model_type": "bert", "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32})
    path = tmp_path_factory.mktemp("base_awr") / "tiny"
    save_checkpoint(TinyVLA(cfg), tok, path, {"version": 0})
    return path


def batch(rng: np.random.Generator, n: int = 64, good_only: bool = False) -> dict[str, np.ndarray]:
    """n/2 states, each with a good and a bad chunk (or only good ones)."""
    half = n if good_only else n // 2
    state = rng.normal(size=(half, S)).astype(np.float32)
    state = state if good_only else np.concatenate([state, state])
    good = np.arange(n) < half
    executed = np.where(good[:, None, None], GOOD, BAD) * np.ones((n, H, A))
    return {
        "state": state, "features": np.zeros((n, F), np.float16),
        "base": np.zeros((n, H, A), np.float32), "executed": executed.astype(np.float32),
        "reward": np.where(good[:, None], 1.0, 0.0) * np.ones((n, H), np.float32),
        "valid": np.ones((n, H), bool), "done": np.ones(n, bool), "truncated": np.zeros(n, bool),
        "next_state": np.zeros((n, S), np.float32), "next_features": np.zeros((n, F), np.float16),
        "next_base": np.zeros((n, H, A), np.float32), "next_valid": np.zeros(n, bool),
    }


def objective(ckpt, **kw) -> BaseAWRObjective:
    settings = {"checkpoint": str(ckpt), "task": TASK, "beta": 0.5, "lr": 3e-3, **kw}
    return BaseAWRObjective(BaseAWRConfig(**settings), critic={"hidden": [64, 64], "lr": 3e-3},
                            critic_objective={"seed": 0})


def mean_action(obj: BaseAWRObjective, rng: np.random.Generator) -> float:
    b = batch(rng, 32, good_only=True)
    from tandem.value.objectives.common import to_tensors

    t = to_tensors(b, obj.device)
    with torch.no_grad():
        return float(obj._sample(obj._features(b, t["state"]), 4, H).mean())


def test_config_is_checked_and_make_objective_builds_it(ckpt):
    with pytest.raises(ConfigError, match="weighting"):
        BaseAWRConfig(checkpoint=str(ckpt), weighting="dpo")
    obj = make_objective(ObjectiveConfig(type="base_awr", base={"checkpoint": str(ckpt), "task": TASK,
                                                                 "weighting": "dagger"}))
    assert isinstance(obj, BaseAWRObjective) and obj.config.weighting == "dagger"
    with pytest.raises(ConfigError, match="objective.base"):
        make_objective(ObjectiveConfig(type="base_awr", base={"checkpoint": str(ckpt), "wmax": 3}))


def test_aloe_weights_favour_the_better_chunk_and_change_the_update(ckpt):
    """After the critic has learnt Q, the good chunks weigh more; forced to 1 the same step moves the
    base differently (so the weighting is what changes the update)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    obj = objective(ckpt, warmup_steps=10_000)  # critic only
    for _ in range(100):
        obj.update(batch(rng, 32))
    from tandem.value.objectives.common import to_tensors

    b = batch(np.random.default_rng(1))
    t = to_tensors(b, obj.device)
    w = obj.sample_weights(b, t)
    good = np.arange(len(w)) < len(w) // 2
    assert w[good].mean() > 3 * w[~good].mean(), (w[good].mean(), w[~good].mean())

    def step(weights):
        obj.model.load_state_dict(start)
        obj.optimizer = torch.optim.SGD(obj.model.parameters(), lr=0.1)
        obj.generator.manual_seed(5)
        loss, _ = obj.base_loss(b, t)
        obj.optimizer.zero_grad()
        ((weights * loss).sum() / len(loss)).backward()
        obj.optimizer.step()
        return torch.cat([p.detach().flatten() for p in obj.model.expert.parameters()])

    start = {k: v.clone() for k, v in obj.model.state_dict().items()}
    weighted, ones = step(w), step(torch.ones_like(w))
    assert (weighted - ones).abs().max() > 1e-4


def test_aloe_learns_the_better_chunk_and_dagger_the_average(ckpt):
    results = {}
    for weighting in ("aloe", "dagger"):
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        obj = objective(ckpt, weighting=weighting, warmup_steps=40, samples=2)
        for _ in range(100):
            obj.update(batch(rng, 32))
        results[weighting] = mean_action(obj, np.random.default_rng(2))
    assert results["aloe"] > 0.3, results  # towards +0.6
    assert abs(results["dagger"]) < 0.25, results  # the average of +0.6 and -0.6
    assert results["aloe"] - results["dagger"] > 0.25, results


def test_the_base_loss_on_its_data_goes_down_and_published_versions_load_back(ckpt, tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    obj = objective(ckpt, weighting="awr")  # the progress-value variant trains too
    losses = [obj.update(batch(rng, 32, good_only=True))["base/flow_loss"] for _ in range(100)]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20]), (np.mean(losses[:20]), np.mean(losses[-20:]))
    assert mean_action(obj, np.random.default_rng(3)) > 0.4
    arrays = obj.weights()["base"]
    obj.save_published("base", 7, tmp_path / "v000007")
    model, _, meta = load_checkpoint(tmp_path / "v000007")
    assert meta["version"] == 7 and meta["weighting"] == "awr"
    assert all(np.array_equal(v.numpy(), arrays[k]) for k, v in model.state_dict().items())
    obj.config.keep_versions = 2  # the learner keeps the newest published versions only
    for v in (8, 9):
        obj.save_published("base", v, tmp_path / f"v{v:06d}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v000008", "v000009"]
    again = objective(ckpt, weighting="awr")  # resume: the same base and counters
    again.load_state_dict(obj.state_dict())
    assert again.base_steps == obj.base_steps
    assert all(np.array_equal(v, again.weights()["base"][k]) for k, v in arrays.items())


def test_decode_jpeg_batch_reads_what_cv2_wrote():
    import cv2

    img = np.zeros((24, 24, 3), np.uint8)
    img[:, :12] = (255, 0, 0)  # red on the left (RGB)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    out = decode_jpeg_batch([[data.tobytes()], [data.tobytes()]])
    assert out.shape == (2, 1, 24, 24, 3) and out.dtype == np.uint8
    assert np.abs(out[0, 0].astype(int) - img).mean() < 8


def test_a_base_with_a_camera_trains_on_the_records_jpeg_images_and_skips_rows_without(tmp_path):
    """Rows carry ``task`` and ``images_jpeg`` as the learner attaches them (robot-sized images, resized
    here); rows whose images are unknown stay out of the base step."""
    import cv2

    tok = build_tokenizer(TASK_INSTRUCTIONS.values(), max_length=16)
    torch.manual_seed(0)
    cam = "observation.images.corner"
    cfg = TinyVLAModelConfig(
        state_dim=S, action_dim=A, chunk_length=H, image_keys=[cam], image_size=16, dim=16, feature_dim=16,
        head_hidden=32, head_blocks=1, vocab_size=len(tok), flow_steps=2,
        vision={"model_type": "vit", "patch_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 32},
        text={"model_type": "bert", "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32})
    save_checkpoint(TinyVLA(cfg), tok, tmp_path / "cam", {"version": 0})
    obj = BaseAWRObjective(BaseAWRConfig(checkpoint=str(tmp_path / "cam"), weighting="aloe", samples=2),
                           critic={"hidden": [32]})
    b = batch(np.random.default_rng(0), 8)
    ok, data = cv2.imencode(".jpg", np.full((24, 24, 3), 128, np.uint8))
    b["task"] = np.array([TASK] * 7 + [None], dtype=object)
    b["images_jpeg"] = np.array([{cam: data.tobytes()}] * 6 + [{}, {cam: data.tobytes()}], dtype=object)
    assert list(obj.usable_rows(b)) == [True] * 6 + [False, False]  # no images / no task (config task empty)
    before = {k: v.clone() for k, v in obj.model.vision.state_dict().items()}
    metrics = obj.update(b)
    assert metrics["base/rows"] == 6 and metrics["base/steps"] == 1
    assert any(not torch.equal(before[k], v) for k, v in obj.model.vision.state_dict().items())  # the camera trains
