"""Base weights from the learner to the policy worker, swapped at an episode boundary (issue #20).

Real sockets on 127.0.0.1 (the learner's LinkServer, the policy link), a real worker process, real MuJoCo.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from links_testkit import wait_for
from sinks_testkit import Collect

from tandem.hardware.metaworld_robot import TASK_INSTRUCTIONS
from tandem.policies.tiny_vla.model import TinyVLA, TinyVLAModelConfig, save_checkpoint, weights_arrays
from tandem.policies.tiny_vla.policy import TinyVLAPolicy, TinyVLAPolicyConfig
from tandem.policies.tiny_vla.tokenizer import build_tokenizer
from tandem.reports.session import write_session_report
from tandem.runtime.config import compose_run
from tandem.runtime.inference import server as policy_server
from tandem.runtime.links import weights as weights_link
from tandem.runtime.links.weights import BaseWeights, LinkBase, LocalBase
from tandem.runtime.session import Session, write_summary
from tandem.value.replay import ReplayStore
from tandem.value.server import LinkServer, ServerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONSTANT = 0.5  # every action of the "constant" base weights


def tiny_cfg(tok):
    return TinyVLAModelConfig(
        image_keys=[], dim=16, feature_dim=16, chunk_length=5, head_hidden=32, head_blocks=1, vocab_size=len(tok),
        text={"model_type": "bert", "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
        flow_steps=2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = build_tokenizer(TASK_INSTRUCTIONS.values(), max_length=16)
    torch.manual_seed(0)
    model = TinyVLA(tiny_cfg(tok))
    path = tmp_path_factory.mktemp("base") / "tiny"
    save_checkpoint(model, tok, path, {"version": 0})
    return path, model


def constant_weights(model: TinyVLA) -> dict[str, np.ndarray]:
    """The model's weights with action_std ~ 0 and action_mean = CONSTANT: every sampled action is CONSTANT."""
    arrays = weights_arrays(model)
    arrays["action_mean"] = np.full_like(arrays["action_mean"], CONSTANT)
    arrays["action_std"] = np.full_like(arrays["action_std"], 1e-7)
    return arrays


def test_policy_link_constants_agree():
    assert weights_link.POLICY_LINK_SCHEMA == policy_server.LINK_SCHEMA
    assert (weights_link.POLICY_STAGE, weights_link.POLICY_ACTIVATE, weights_link.POLICY_STAGED) == (
        policy_server.STAGE, policy_server.ACTIVATE, policy_server.STAGED)


def test_local_policy_stages_then_activates_and_refuses_bad_weights(ckpt):
    path, model = ckpt
    policy = TinyVLAPolicy(TinyVLAPolicyConfig(path=str(path), device="cpu"))
    consumer = BaseWeights(policy.weights_schema(), LocalBase(policy))
    obs = {"observation.state": np.zeros(39, np.float32)}
    task = TASK_INSTRUCTIONS["reach-v3"]
    bad = constant_weights(model)
    bad["expert.out.bias"] = np.full_like(bad["expert.out.bias"], np.nan)
    with pytest.raises(ValueError, match="non-finite"):
        consumer.prepare_weights(bad, 1)
    wrong = {k: v for k, v in constant_weights(model).items() if k != "action_std"}
    with pytest.raises(ValueError, match="missing"):
        consumer.prepare_weights(wrong, 1)
    consumer.prepare_weights(constant_weights(model), 2)
    chunk = policy.infer(obs, task)  # staged, not active: the old network still answers
    assert chunk.version == 0 and not np.allclose(chunk.actions, CONSTANT, atol=1e-3)
    consumer.load_weights(2, 2)
    chunk = policy.infer(obs, task)
    assert chunk.version == 2 and np.allclose(chunk.actions, CONSTANT, atol=1e-3)
    with pytest.raises(ValueError, match="not staged"):
        consumer.load_weights(3, 3)
    assert policy.version == 2
    # a newer set staged while an older one is activated stays for the next boundary (the weights thread
    # stages while the control thread activates)
    consumer.prepare_weights(constant_weights(model), 4)
    consumer.prepare_weights(weights_arrays(model), 5)
    consumer.load_weights(4, 4)
    consumer.load_weights(5, 5)
    chunk = policy.infer(obs, task)
    assert chunk.version == 5 and not np.allclose(chunk.actions, CONSTANT, atol=1e-3)


def test_worker_refuses_a_bad_hash_and_an_unstaged_version(ckpt, tmp_path):
    """The policy worker checks the sha256 itself and never activates what it did not stage."""
    path, model = ckpt
    cfg = compose_run(["policy=tiny_vla", f"policy.path={path}", "policy.device=cpu", "robot.cameras=[]",
                       "robot.suite=[]", "robot.task=reach-v3", "session.backend=process", "policy_link.warmup=0"])
    from tandem.runtime.inference.client import ProcessBackend

    backend = ProcessBackend(cfg.robot, cfg.policy, cfg.policy_link)
    target = LinkBase(lambda: backend.endpoint, stage_timeout_s=30, activate_timeout_s=10)
    try:
        assert "weights" in backend.info
        arrays = constant_weights(model)
        digest = weights_link.digest_arrays(arrays)
        arrays["action_mean"] = arrays["action_mean"] + 1.0  # changed after hashing
        with pytest.raises(RuntimeError, match="sha256"):
            target._request(weights_link.POLICY_STAGE, {"version": 1, "sha256": digest}, arrays, 30)
        with pytest.raises(RuntimeError, match="not staged"):
            target.activate(1)
        target.stage(constant_weights(model), 4)
        target.activate(4)
        backend.submit(0, {"observation.state": np.zeros(39, np.float32)}, TASK_INSTRUCTIONS["reach-v3"])
        replies = []
        assert wait_for(lambda: replies.extend(backend.poll(0.05)) or replies, 20)
        assert replies[0][1].version == 4 and np.allclose(replies[0][1].actions, CONSTANT, atol=1e-3)
    finally:
        target.close()
        backend.close()


def test_base_weights_pushed_mid_session_run_from_the_next_episode(ckpt, tmp_path):
    """A learner publishes base v1 after episode 0: the worker serves it from episode 1's first chunk on.
    Then a non-finite v2 and a v3 of the wrong schema are refused and reported; episode 2 still runs v1."""
    path, model = ckpt
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0), store).start()
    cfg = compose_run([
        "policy=tiny_vla", f"policy.path={path}", "policy.device=cpu", "robot.cameras=[]", "robot.suite=[]",
        "robot.task=reach-v3", "robot.realtime=false", "session.backend=process", "policy_link.warmup=0",
        "session.episodes=3", "session.max_episode_steps=15", "session.horizon=5", "scheduler.splice=naive",
        "loop.stop_on_success=false", "record.enabled=false", "link.enabled=true", "link.robot_id=r1",
        f"link.experience_port={server.experience_port}", f"link.weights_port={server.weights_port}",
        f"link.spool_dir={tmp_path / 'spool'}", "link.timeout_s=2.0",
    ])
    sink = Collect()
    session = Session(cfg, sinks=[sink])
    nan = constant_weights(model)
    nan["expert.out.weight"][0, 0] = np.nan
    wrong = {**constant_weights(model), "extra": np.zeros(3, np.float32)}

    def on_episode(result):
        stats = session.weights_link.stats
        if result.episode == 0:
            server.publish("base", constant_weights(model), 1, "run-a")
            assert wait_for(lambda: stats.versions.get("base") == 1, 30), stats  # staged in the worker
        if result.episode == 1:
            server.publish("base", nan, 2, "run-a")
            assert wait_for(lambda: stats.rejected_reasons.get("non_finite") == 1, 30), stats
            server.publish("base", wrong, 3, "run-a")
            assert wait_for(lambda: stats.rejected_reasons.get("wrong_schema") == 1, 30), stats

    try:
        summary = session.run(on_episode=on_episode)
        assert wait_for(lambda: server.robots_status().get("r1", {}).get("weights_refused", {}).get("base") == 2, 5)
        robots = server.robots_status()
    finally:
        server.stop()
        store.close()
    assert [e["base_version"] for e in summary.episodes] == [0, 1, 1]
    by_episode = {k: [t for t in sink.ticks if t.episode == k] for k in range(3)}
    assert all(len(v) == 15 for v in by_episode.values())
    # every tick records the base version that produced its action; the swap falls exactly on the boundary
    assert {t.base_version for t in by_episode[0]} == {0}
    assert {t.base_version for t in by_episode[1]} == {1} and {t.base_version for t in by_episode[2]} == {1}
    base0 = np.stack([t.base_action for t in by_episode[0]])
    assert not np.allclose(base0, CONSTANT, atol=1e-3)  # the checkpoint's own actions
    for k in (1, 2):  # the new weights' actions from the first tick of the next episode on
        assert np.allclose(np.stack([t.base_action for t in by_episode[k]]), CONSTANT, atol=1e-3)
    weights = summary.links["weights"]
    assert weights["applied_versions"]["base"] == 1 and weights["rejected"] == 2
    assert robots["r1"]["weights_staged"]["base"] == 1
    report = write_session_report(write_summary(summary, tmp_path / "run").parent).read_text()
    table = report.split("## Base policy versions", 1)[1].split("##", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    assert [r[:3] for r in rows[2:]] == [["0", "1", "v0"], ["1-2", "2", "v1"]], table


def test_a_remote_policy_server_takes_base_weights_through_the_same_consumer(ckpt):
    """``session.backend=remote`` (``tandem serve-policy``): the base consumer built for the remote backend
    stages and activates over the policy link; the server's chunks carry the new version."""
    import threading

    from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig
    from tandem.runtime.inference.client import PolicyLinkConfig, RemoteBackend
    from tandem.runtime.inference.server import serve_policy
    from tandem.runtime.links.weights import base_consumer

    path, model = ckpt
    policy = TinyVLAPolicy(TinyVLAPolicyConfig(path=str(path), device="cpu"))
    robot = MetaWorldRobot(MetaWorldRobotConfig(cameras=[]))
    stop, ready, where = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=serve_policy, kwargs=dict(
        policy=policy, robot=robot, bind="tcp://127.0.0.1:*", stop=stop,
        on_ready=lambda ep: (where.append(ep), ready.set())), daemon=True)
    thread.start()
    backend = None
    try:
        assert ready.wait(10)
        backend = RemoteBackend(PolicyLinkConfig(endpoint=where[0], start_timeout_s=10))
        consumer = base_consumer(None, backend)
        assert isinstance(consumer.target, LinkBase) and consumer.weights_schema() == policy.weights_schema()
        consumer.prepare_weights(constant_weights(model), 3)
        consumer.load_weights(3, 3)
        backend.submit(1, {"observation.state": np.zeros(39, np.float32)}, TASK_INSTRUCTIONS["reach-v3"])
        replies = []
        assert wait_for(lambda: replies.extend(backend.poll(0.05)) or replies, 20)
        assert replies[0][1].version == 3 and np.allclose(replies[0][1].actions, CONSTANT, atol=1e-3)
        consumer.close()
    finally:
        if backend is not None:
            backend.close()
        stop.set()
        thread.join(5)
