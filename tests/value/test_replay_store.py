"""Replay store (dedupe, buffers, mixing, recovery), checkpoints, the objective and learner resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from links_testkit import make_record

from tandem.protocol.checkpoint import load_checkpoint, save_checkpoint
from tandem.protocol.messages import record_to_message
from tandem.protocol.wire import decode, encode
from tandem.value.replay import DUPLICATE, GAP, REJECTED, STORED, ReplayConfig, ReplayStore, record_entries


def msg(robot, seq, stream="s1", intervention=False, source="online", nan=False):
    rec = make_record(robot, 0, seq, intervention=intervention)
    if nan:
        rec.reward[:] = np.nan
    return decode([bytes(f) for f in encode(record_to_message(rec, seq, stream, source))], copy=True)


def test_dedupe_gap_and_buffers(tmp_path):
    store = ReplayStore(tmp_path, ReplayConfig(capacity=100))
    assert store.offer(msg("a", 1)) == STORED
    assert store.offer(msg("a", 1)) == DUPLICATE
    assert store.offer(msg("a", 3)) == GAP
    assert store.offer(msg("a", 2, intervention=True)) == STORED
    assert store.offer(msg("a", 1, stream="s2", source="demo")) == STORED  # a new stream starts at 1
    assert store.offer(msg("b", 1, nan=True)) == REJECTED
    assert store.offer(msg("b", 2)) == STORED  # the rejected seq was consumed
    store.commit()
    assert store.sizes() == {"demo": 1, "autonomous": 2, "takeover": 1}
    assert store.last_seq("a", "s1") == 2 and store.last_seq("b", "s1") == 2
    store.close()
    again = ReplayStore(tmp_path, ReplayConfig(capacity=100))  # recovery from the log
    assert again.sizes() == {"demo": 1, "autonomous": 2, "takeover": 1}
    assert again.last_seq("a", "s1") == 2 and again.last_seq("a", "s2") == 1 and again.last_seq("b", "s1") == 2
    assert again.offer(msg("a", 2)) == DUPLICATE
    entries = list(record_entries(tmp_path))
    assert [m.kind for m, _ in entries].count("tombstone") == 1 and len(entries) == 5
    again.close()


def test_mixing_ratios(tmp_path):
    store = ReplayStore(tmp_path, ReplayConfig(capacity=50, demo_ratio=0.5, autonomous_ratio=0.3, takeover_ratio=0.2))
    assert store.split(10) == {"demo": 0, "autonomous": 0, "takeover": 0}
    for i in range(1, 5):
        store.offer(msg("a", i))
    assert store.split(10) == {"demo": 0, "autonomous": 10, "takeover": 0}  # empty buffers give their share away
    for i in range(1, 5):
        store.offer(msg("d", i, source="demo"))
        store.offer(msg("t", i, intervention=True))
    assert store.split(10) == {"demo": 5, "autonomous": 3, "takeover": 2}
    batch = store.sample(20, np.random.default_rng(0))
    assert batch["executed"].shape == (20, 10, 4) and batch["state"].shape == (20, 39)
    assert np.bincount(batch["buffer"], minlength=3).tolist() == [10, 6, 4]
    assert batch["intervention"][batch["buffer"] == 2].any(axis=1).all()
    assert not batch["intervention"][batch["buffer"] == 1].any()
    store.close()


def test_ring_buffer_capacity(tmp_path):
    store = ReplayStore(tmp_path, ReplayConfig(capacity=3, fsync=False))
    for i in range(1, 8):
        store.offer(msg("a", i))
    assert store.sizes()["autonomous"] == 3
    assert sorted(store.buffers["autonomous"].data["chunk_index"].tolist()) == [5, 6, 7]
    store.close()


def test_checkpoint_write_then_rename_and_fallback(tmp_path):
    import torch

    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    assert not list(tmp_path.glob("*.tmp"))
    assert load_checkpoint(tmp_path)["step"] == 4
    (tmp_path / "ckpt-00000004.pt").write_bytes(b"torn")  # corrupt the newest: fall back to the older one
    assert load_checkpoint(tmp_path)["step"] == 3
    (tmp_path / "latest.json").write_text("{not json")
    assert load_checkpoint(tmp_path)["step"] == 3
    assert load_checkpoint(tmp_path / "missing") is None


def test_learner_trains_checkpoints_and_resumes(tmp_path):
    """A real learner (sockets on free ports) trains, checkpoints, and resumes step, optimiser and versions."""
    from tandem.value.config import LearnerConfig
    from tandem.value.learner import Learner
    from tandem.value.objectives.base import ObjectiveConfig

    store = ReplayStore(tmp_path / "replay")
    for i in range(1, 41):
        store.offer(msg("a", i))
    store.close()
    cfg = dict(experience_port=0, weights_port=0, store_dir=str(tmp_path), device="cpu", batch_size=16, min_records=8,
               publish_every_updates=10, checkpoint_every_updates=15, objective=ObjectiveConfig(hidden=32, lr=3e-3))
    first = Learner(LearnerConfig(max_updates=30, **cfg)).run()
    assert first["step"] == 30 and first["versions"] == {"critic": 3} and first["replay"]["autonomous"] == 40
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["step"] == 30
    second = Learner(LearnerConfig(max_updates=45, **cfg)).run()
    assert second["step"] == 45 and second["run"] == first["run"] and second["versions"] == {"critic": 4}
    state = load_checkpoint(tmp_path / "checkpoints")
    assert state["step"] == 45 and state["objective"]["updates"] == 45
    assert next(iter(state["objective"]["optim"]["state"].values()))["step"].item() == 45
    assert second["metrics"]["loss"] < 5.0  # it learns: predicting 0 costs E[sum of 10 U(0,1)]^2 ~ 26


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("device", "tpu"), ("piece_bytes", 10)])
def test_learner_config_validation(field, value):
    from tandem.core.errors import ConfigError
    from tandem.value.config import LearnerConfig

    with pytest.raises(ConfigError, match=f"learner.{field}"):
        LearnerConfig(**{field: value})


def test_compose_learner_overrides():
    from tandem.value.config import compose_learner

    cfg = compose_learner(["learner.batch_size=7", "learner.replay.takeover_ratio=0.5", "learner.objective.hidden=16"])
    assert cfg.batch_size == 7 and cfg.replay.takeover_ratio == 0.5 and cfg.objective.hidden == 16


def test_resume_from_an_older_checkpoint_never_reuses_a_published_version(tmp_path):
    from tandem.value.config import LearnerConfig
    from tandem.value.learner import Learner
    from tandem.value.objectives.base import ObjectiveConfig

    store = ReplayStore(tmp_path / "replay")
    for i in range(1, 21):
        store.offer(msg("a", i))
    store.close()
    cfg = dict(experience_port=0, weights_port=0, store_dir=str(tmp_path), device="cpu", batch_size=8, min_records=8,
               publish_every_updates=10, checkpoint_every_updates=15, objective=ObjectiveConfig(hidden=8))
    assert Learner(LearnerConfig(max_updates=30, **cfg)).run()["versions"] == {"critic": 3}
    # as if killed after publishing v3 but before checkpointing update 30: only update 15 (v1) survives
    (tmp_path / "checkpoints" / "ckpt-00000030.pt").unlink()
    (tmp_path / "checkpoints" / "latest.json").unlink()
    resumed = Learner(LearnerConfig(max_updates=20, **cfg)).run()
    assert resumed["step"] == 20 and resumed["versions"] == {"critic": 4}


def test_latest_only_keeps_the_newest_weights_per_kind():
    from tandem.protocol.wire import Message
    from tandem.runtime.links.weights import latest_only

    msgs = [Message("weights", meta={"wkind": "head", "version": 1}), Message("hb"),
            Message("weights", meta={"wkind": "critic", "version": 1}), Message("weights", meta={"wkind": "head", "version": 2})]
    kept = latest_only(msgs)
    assert [(m.kind, m.meta.get("wkind"), m.meta.get("version")) for m in kept] == [
        ("hb", None, None), ("weights", "critic", 1), ("weights", "head", 2)]


def _chunk_msg(robot, episode, chunk, seq, stream, intervention=False, done=False):
    rec = make_record(robot, episode, chunk, intervention=intervention, seed=seq + 1000 * int(stream[1:]))
    rec.done = done
    return rec, decode([bytes(f) for f in encode(record_to_message(rec, seq, stream, "online"))], copy=True)


def test_consecutive_chunks_are_paired_as_td_transitions(tmp_path):
    """Chunk k gets chunk k+1's state/features/base as next_*; episodes and streams never mix."""
    store = ReplayStore(tmp_path, ReplayConfig(capacity=100))
    recs = []
    # stream s1: episode 0 = chunks 0 (autonomous), 1 (takeover), 2 (done); stream s2 reuses episode id 0
    for seq, (chunk, inter, done) in enumerate([(0, False, False), (1, True, False), (2, False, True)], start=1):
        rec, m = _chunk_msg("a", 0, chunk, seq, "s1", inter, done)
        recs.append(rec)
        assert store.offer(m) == STORED
    other, m = _chunk_msg("a", 0, 1, 1, "s2")  # chunk 1 of another session's episode 0: not s1's successor
    assert store.offer(m) == STORED

    def rows():
        out = {}
        for buf in store.buffers.values():
            for i in range(buf.size):
                out[(int(buf.data["chunk_index"][i]), float(buf.data["state"][i][0]))] = {k: v[i] for k, v in buf.data.items()}
        return out

    def check():
        got = rows()
        r0, r1, r2 = (got[(c, float(r.state[0]))] for c, r in enumerate(recs))
        assert r0["next_valid"] and np.array_equal(r0["next_state"], recs[1].state)
        assert np.array_equal(r0["next_base"], recs[1].base) and np.array_equal(r0["next_features"], recs[1].features)
        assert r1["next_valid"] and np.array_equal(r1["next_state"], recs[2].state)  # across buffers
        assert not r2["next_valid"]  # terminal: nothing to bootstrap from
        assert not got[(1, float(other.state[0]))]["next_valid"]

    check()
    batch = store.sample(16, np.random.default_rng(0))
    assert {"next_state", "next_features", "next_base", "next_valid"} <= set(batch)
    store.close()
    again = ReplayStore(tmp_path, ReplayConfig(capacity=100))  # the pairing is rebuilt from the log
    store = again
    check()
    again.close()


def test_pairing_skips_a_predecessor_the_ring_overwrote(tmp_path):
    store = ReplayStore(tmp_path, ReplayConfig(capacity=2))
    for seq in range(1, 4):  # chunks 0..2 of one episode into a 2-slot ring: chunk 0 is overwritten by chunk 2
        _, m = _chunk_msg("a", 0, seq - 1, seq, "s1")
        store.offer(m)
    buf = store.buffers["autonomous"]
    by_chunk = {int(buf.data["chunk_index"][i]): bool(buf.data["next_valid"][i]) for i in range(buf.size)}
    assert by_chunk == {1: True, 2: False}
    store.close()


def test_overlapping_records_pair_with_the_record_h_ticks_later(tmp_path):
    """record_stride 5 at H = 10: the record starting at t bootstraps from the one starting at t + 10."""
    store = ReplayStore(tmp_path, ReplayConfig(capacity=100))
    recs = {}
    for seq, start in enumerate([0, 5, 10, 15, 20], start=1):
        rec = make_record("a", 0, start // 5, seed=seq)
        rec.start_tick, rec.done = start, start == 20
        recs[start] = rec
        assert store.offer(decode([bytes(f) for f in encode(record_to_message(rec, seq, "s1"))], copy=True)) == STORED

    def check():
        buf = store.buffers["autonomous"]
        by_start = {5 * int(buf.data["chunk_index"][i]): i for i in range(buf.size)}
        for start, successor in ((0, 10), (5, 15), (10, 20)):
            i = by_start[start]
            assert buf.data["next_valid"][i] and np.array_equal(buf.data["next_state"][i], recs[successor].state)
            assert np.array_equal(buf.data["next_base"][i], recs[successor].base)
        assert not buf.data["next_valid"][by_start[15]]  # nothing starts at 25 (the stream was cut)
        assert not buf.data["next_valid"][by_start[20]]  # terminal

    check()
    store.close()
    store = ReplayStore(tmp_path, ReplayConfig(capacity=100))  # the start ticks come back from the log
    check()
    store.close()
