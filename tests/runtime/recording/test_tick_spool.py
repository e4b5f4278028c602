"""The recorder's spool format and the dataset commit journal, without lerobot."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY, Feature
from tandem.runtime.control.loop import TickRecord
from tandem.runtime.recording.dataset_store import (
    DatasetBusyError,
    DatasetCorruptError,
    Journal,
    acquire_session_lock,
)
from tandem.runtime.recording.tick_spool import (
    TICKS,
    SpoolEpisodeWriter,
    SpoolSchema,
    dtype_from_json,
    dtype_to_json,
    list_spool,
    read_spool_episode,
)


def schema(feature_dim=3):
    obs = {STATE_KEY: Feature("float32", (5,)), IMAGE_PREFIX + "cam": Feature("uint8", (8, 8, 3))}
    return SpoolSchema.build(obs, Feature("float32", (2,), names=("a", "b")), feature_dim)


def tick(k, feature_dim=3):
    rng = np.random.default_rng(k)
    return TickRecord(
        episode=0, tick=k,
        observation={STATE_KEY: rng.normal(size=5).astype(np.float32),
                     IMAGE_PREFIX + "cam": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)},
        base_action=rng.normal(size=2).astype(np.float32), head_action=np.zeros(2, np.float32),
        action=rng.normal(size=2).astype(np.float32), is_intervention=k % 2 == 1, takeover_start=k == 1,
        starved=False, chunk_index=k // 4, chunk_step=k % 4, head_version=2, base_version=3,
        features=rng.normal(size=feature_dim).astype(np.float16), reward=0.25 * k, success=False,
        done=False, truncated=False, obs_time=1.7e9 + k / 50, send_time=1.7e9 + k / 50 + 1e-3, lateness_ms=0.1,
    )  # fmt: skip


def write_episode(directory, schema, n, end=None):
    writer = SpoolEpisodeWriter(directory, {"session": 1, "episode": 0, "task": "t", "fps": 50,
                                            "features": schema.features}, schema.dtype)
    rows = [schema.pack(tick(k)) for k in range(n)]
    for row in rows:
        writer.append(row)
    if end is None:
        writer.close()
    else:
        writer.finish(end)
    return rows


def test_schema_lists_every_feature_as_lerobot_wants_it():
    s = schema()
    assert s.features["observation.images.cam"]["dtype"] == "video"
    assert s.features["action"] == {"dtype": "float32", "shape": (2,), "names": ["a", "b"]}
    assert s.features["policy_features"]["shape"] == (3,)
    for key in ("base_action", "head_action", "is_intervention", "takeover_start", "chunk_index", "chunk_step",
                "head_version", "reward", "done", "wall_time", "tick_lateness_ms", "base_version", "truncated",
                "obs_time", "send_time"):
        assert key in s.features and key in s.dtype.names
    assert "policy_features" not in schema(feature_dim=0).features
    assert dtype_from_json(dtype_to_json(s.dtype)) == s.dtype


def test_pack_copies_the_tick():
    s, t = schema(), tick(3)
    row = s.pack(t)
    t.observation[STATE_KEY][:] = 0  # the robot reuses its buffer: the record must not change
    assert np.array_equal(row[STATE_KEY][0], tick(3).observation[STATE_KEY])
    assert row["obs_time"][0, 0] == t.obs_time and row["wall_time"][0, 0] == t.obs_time
    assert row["tick_lateness_ms"][0, 0] == np.float32(0.1) and row["is_intervention"][0, 0]
    assert np.array_equal(row["policy_features"][0], t.features.astype(np.float32))


def test_spooled_episode_reads_back_exactly(tmp_path):
    s = schema()
    rows = write_episode(tmp_path / "000001-000000", s, 6, end={"outcome": "success"})
    ep = read_spool_episode(tmp_path / "000001-000000")
    assert ep.complete and ep.end["outcome"] == "success" and ep.end["records"] == 6 and ep.torn_bytes == 0
    names = [n for n in s.dtype.names if not n.startswith("_")]
    for got, want in zip(ep.rows, rows, strict=True):
        for name in names:
            assert np.array_equal(got[name], want[name][0])
    assert ep.header["features"]["observation.state"]["shape"] == (5,)
    assert [p.name for p in list_spool(tmp_path)] == ["000001-000000"]


def test_a_torn_or_corrupt_tail_is_dropped(tmp_path):
    s = schema()
    d = tmp_path / "000001-000000"
    write_episode(d, s, 5)
    with open(d / TICKS, "ab") as f:  # a kill in the middle of a write
        f.write(b"\x31\x53\x44\x54" + b"\x00" * 100)
    ep = read_spool_episode(d)
    assert not ep.complete and len(ep.rows) == 5 and ep.torn_bytes == 104

    data = bytearray((d / TICKS).read_bytes())
    data[3 * s.record_bytes + 40] ^= 0xFF  # bit rot inside record 3
    (d / TICKS).write_bytes(bytes(data))
    ep = read_spool_episode(d)
    assert len(ep.rows) == 3 and ep.torn_bytes == len(data) - 3 * s.record_bytes


def test_an_episode_without_header_reads_as_nothing(tmp_path):
    (tmp_path / "000001-000000").mkdir()
    assert read_spool_episode(tmp_path / "000001-000000") is None


def test_journal_rolls_back_to_the_last_commit(tmp_path):
    root = tmp_path / "ds"
    (root / "meta").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text('{"total_episodes": 1}')
    (root / "data" / "chunk-000" / "file-000.parquet").write_bytes(b"committed")
    journal = Journal(root)
    assert journal.init()["seq"] == 0

    # without a pending write, changes are someone else's: adopted, never deleted
    (root / "README.md").write_text("my notes")
    assert journal.rollback() == {"removed": [], "restored": [], "adopted": True}
    assert journal.manifest()["seq"] == 1 and "README.md" in journal.manifest()["files"]

    # an episode being written when the process died: new files, rewritten meta, temporary images
    journal.begin("000001-000000")
    (root / "data" / "chunk-000" / "file-001.parquet").write_bytes(b"no footer")
    (root / "meta" / "info.json").write_text('{"total_episodes": 2, "half-written')
    (root / "meta" / "tasks.parquet").write_bytes(b"new")
    (root / "images" / "cam" / "episode-000001").mkdir(parents=True)
    (root / "images" / "cam" / "episode-000001" / "frame-000000.png").write_bytes(b"png")
    report = journal.rollback()
    assert sorted(report["removed"]) == ["data/chunk-000/file-001.parquet",
                                         "images/cam/episode-000001/frame-000000.png", "meta/tasks.parquet"]
    assert report["restored"] == ["meta/info.json"]
    assert (root / "meta" / "info.json").read_text() == '{"total_episodes": 1}'
    assert not (root / "images").exists() and (root / "README.md").exists()
    assert not journal.pending_path.exists()
    assert journal.rollback() == {"removed": [], "restored": [], "adopted": False}

    (root / "data" / "chunk-000" / "file-000.parquet").unlink()  # a committed file lost: say so
    journal.begin("000001-000001")
    with pytest.raises(DatasetCorruptError, match="file-000.parquet"):
        journal.rollback()


def test_one_session_at_a_time(tmp_path):
    fd = acquire_session_lock(tmp_path)
    try:
        with pytest.raises(DatasetBusyError, match="another session"):
            acquire_session_lock(tmp_path)
    finally:
        os.close(fd)
    os.close(acquire_session_lock(tmp_path))
