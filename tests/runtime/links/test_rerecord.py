"""Re-record (issue #22): the operator's "rerecord" discards the episode from the recorded LeRobotDataset and
retracts its chunk records from the learner's replay (durably), and the session still keeps the configured
number of episodes.

Real sockets on 127.0.0.1, a spawned learner process, real MuJoCo, the dataset read back with lerobot.
"""

from __future__ import annotations

import numpy as np
import pytest
from links_testkit import make_record
from session_testkit import RerecordOnce, dataset_without_rerecorded, live_episodes, replay_without_rerecorded

from tandem.commands.learner_process import LearnerProcess
from tandem.protocol.messages import RECORD_SCHEMA, record_to_message, retract_message
from tandem.protocol.wire import WireError, decode, encode
from tandem.runtime.config import compose_run
from tandem.runtime.session import Session
from tandem.value.replay import REJECTED, STORED, ReplayConfig, ReplayStore, record_entries

ROBOT, STREAM = "robot0", "s1"


def offer(store: ReplayStore, msg) -> str:
    return store.offer(decode(encode(msg), copy=True))


def test_the_replay_drops_a_retracted_episode_never_samples_it_and_keeps_it_dropped_after_a_restart(tmp_path):
    store = ReplayStore(tmp_path, ReplayConfig(capacity=64))
    seq = 0

    def record(episode, chunk):
        nonlocal seq
        seq += 1
        return offer(store, record_to_message(make_record(ROBOT, episode, chunk), seq, STREAM))

    try:
        for ep in (0, 1):
            for c in range(3):
                assert record(ep, c) == STORED  # seqs 1-3: episode 0, 4-6: episode 1
        seq += 1
        assert offer(store, retract_message(ROBOT, seq, STREAM, 1, 4, run="run-a")) == STORED
        assert live_episodes(store) == [0, 0, 0] and store.size == 3
        assert store.counts["retractions"] == 1 and store.counts["retracted"] == 3
        for c in range(2):  # the next episode (ids are not reused within a session)
            assert record(2, c) == STORED
        rng = np.random.default_rng(0)
        batch = store.sample(500, rng)
        assert set(batch["episode_id"].tolist()) == {0, 2}  # never the retracted episode
        # a retraction counts only from its from_seq on: an earlier run of episode id 0 (another session on
        # this stream) keeps its records when a later run of episode 0 is retracted
        for c in range(2):
            assert record(0, 10 + c) == STORED  # seqs 10, 11
        seq += 1
        assert offer(store, retract_message(ROBOT, seq, STREAM, 0, 10)) == STORED
        assert live_episodes(store) == [0, 0, 0, 2, 2]
        # malformed retractions are refused (tombstoned), not applied
        seq += 1
        assert offer(store, retract_message(ROBOT, seq, STREAM, 2, seq + 5)) == REJECTED
        assert live_episodes(store) == [0, 0, 0, 2, 2]
    finally:
        store.close()
    again = ReplayStore(tmp_path, ReplayConfig(capacity=64))  # rebuilt from the log: still dropped
    try:
        assert live_episodes(again) == [0, 0, 0, 2, 2] and again.size == 5
        assert again.counts["retractions"] == 2 and again.counts["retracted"] == 5
        assert again.last_seq(ROBOT, STREAM) == seq
    finally:
        again.close()
    kinds = [m.kind for m, _ in record_entries(tmp_path)]
    assert kinds.count("retract") == 2 and kinds.count("chunk") == 10  # the log keeps every record


def test_a_retract_message_is_checked():
    msg = retract_message(ROBOT, 7, STREAM, 3, 2, run="r")
    assert msg.schema == RECORD_SCHEMA and msg.meta == {"stream": STREAM, "episode": 3, "from_seq": 2, "run": "r"}
    from tandem.protocol.messages import check_retract

    assert check_retract(msg) == (3, 2, "r")
    for meta in ({"from_seq": 0}, {"from_seq": 8}, {"episode": "3"}, {"run": 5}):
        bad = retract_message(ROBOT, 7, STREAM, 3, 2)
        bad.meta.update(meta)
        with pytest.raises(WireError, match="bad_meta"):
            check_retract(bad)


def test_recovery_discards_a_spooled_rerecorded_episode_the_session_left_behind(tmp_path):
    """A session killed after a re-recorded episode was spooled (end.json written) but before its converter
    discarded it: ``tandem recover`` discards it too, never converts it."""
    from tandem.hardware.features import STATE_KEY, Feature
    from tandem.runtime.control.loop import TickRecord
    from tandem.runtime.recording.dataset_store import recover, spool_dir
    from tandem.runtime.recording.tick_spool import SpoolEpisodeWriter, SpoolSchema, episode_name, list_spool

    schema = SpoolSchema.build({STATE_KEY: Feature("float32", (3,))}, Feature("float32", (2,)), 0)
    root = tmp_path / "dataset"
    spool_dir(root).mkdir(parents=True)
    name = episode_name(1, 0)
    writer = SpoolEpisodeWriter(spool_dir(root) / name, {"session": 1, "seq": 0, "episode": 4, "task": "t", "fps": 20,
                                                         "features": schema.features}, schema.dtype)
    for k in range(5):
        z = np.zeros(2, np.float32)
        writer.append(schema.pack(TickRecord(
            episode=4, tick=k, observation={STATE_KEY: np.zeros(3, np.float32)}, base_action=z, head_action=z,
            action=z, is_intervention=False, takeover_start=False, starved=False, chunk_index=0, chunk_step=k,
            head_version=0, base_version=0, features=np.zeros(0, np.float16), reward=0.0, success=False,
            done=False, truncated=k == 4, obs_time=0.0, send_time=0.0, lateness_ms=0.0)))
    writer.finish({"outcome": "rerecord", "steps": 5})
    report = recover(root)
    assert report["discarded"] == [name] and report["committed"] == [] and report["episodes"] == 0
    assert list_spool(spool_dir(root)) == []


def test_rerecord_discards_the_episode_from_the_dataset_and_the_learner_and_reuses_its_slot(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_run(["policy=scripted", "robot.realtime=false", "robot.cameras=[]", "robot.task=reach-v3",
                       "session.backend=inline", "session.episodes=2", "robot.max_episode_steps=40",
                       "loop.stop_on_success=false", "learn.spawn=true", "learn.learner.min_records=1000000",
                       f"session.run_dir={run_dir}"])
    learner = LearnerProcess(cfg, run_dir).start()
    try:
        session = Session(cfg)
        session.build()
        session.controller.operator = RerecordOnce(episode=1, tick=25)
        summary = session.run()
    finally:
        assert learner.stop() == 0

    # the session kept 2 episodes; the re-recorded one ran its scene again under a new id
    assert [e["episode"] for e in summary.episodes] == [0, 2]
    assert [e["seed"] for e in summary.episodes] == [0, 1]
    assert [(e["episode"], e["seed"], e["outcome"], e["steps"]) for e in summary.rerecorded] == [(1, 1, "rerecord", 26)]
    assert summary.recording["episodes_committed"] == 2 and summary.recording["episodes_rerecorded"] == 1
    assert summary.links["all_acked"] and summary.links["experience"]["retractions"] == 1

    # the dataset, read back with lerobot: two episodes, indices contiguous, none of them the re-recorded one
    _, entries = dataset_without_rerecorded(run_dir / "dataset", 40)
    assert [e["outcome"] for e in entries] == ["timeout", "timeout"]

    # the learner got the episode's records, then the retraction: its replay (rebuilt from its durable log)
    # holds none of them, and never samples them
    sent_of_1, size = replay_without_rerecorded(run_dir / "learner" / "replay")
    assert sent_of_1 == 3 and size == 2 * 4  # 26 ticks = 3 chunks of H=10; 40 ticks = 4 chunks each
