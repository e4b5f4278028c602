"""The recorder end to end: a MetaWorld session recorded into a LeRobotDataset, read back with lerobot.

Every per-frame feature must equal what the loop sent, frame for frame; videos must decode to the
recorded frames within codec tolerance; chunk records rebuilt from the dataset must equal the ones the
live ChunkAssembler produced; dropped ticks must be counted and reported.
"""

from __future__ import annotations

import copy
import json
import threading
import time

import numpy as np
import pytest

from tandem.cli import main as tandem_main
from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY, Feature
from tandem.runtime.config import compose_run
from tandem.runtime.control.loop import EpisodeResult, TickRecord
from tandem.runtime.links.chunks import ChunkAssembler
from tandem.runtime.links.from_dataset import column_to_numpy as column
from tandem.runtime.links.from_dataset import load_chunk_records, read_outcomes
from tandem.runtime.recording.dataset_store import default_repo_id, spool_dir
from tandem.runtime.recording.recorder import RecordConfig, Recorder
from tandem.runtime.recording.tick_spool import SpoolEpisodeWriter
from tandem.runtime.session import Session

POOR_POLICY = ["policy.noise_std=0.3", "policy.bias=0.3", "policy.chunk_length=5"]


class Capture:
    """TickSink keeping a deep copy of every tick and each episode's result."""

    def __init__(self):
        self.ticks: list[TickRecord] = []
        self.results: list[EpisodeResult] = []
        self.tasks: list[str] = []

    def start_episode(self, episode, task):
        self.tasks.append(task)

    def on_tick(self, record):
        self.ticks.append(copy.deepcopy(record))

    def end_episode(self, result):
        self.results.append(result)


def load(root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(default_repo_id(root), root=root)


def assert_frames_equal(ds, ticks, tasks_by_episode):
    """Every non-video per-frame feature of ``ds`` equals the ticks, in order (exact, float64 included)."""
    table = ds.hf_dataset.with_format("arrow")[:]
    cols = {name: column(table, name) for name in table.column_names}
    assert len(cols["index"]) >= len(ticks)
    expect = {
        STATE_KEY: lambda t: np.asarray(t.observation[STATE_KEY], np.float32),
        "action": lambda t: t.action,
        "base_action": lambda t: np.asarray(t.base_action, np.float32),
        "head_action": lambda t: np.asarray(t.head_action, np.float32),
        "is_intervention": lambda t: t.is_intervention,
        "takeover_start": lambda t: t.takeover_start,
        "starved": lambda t: t.starved,
        "success": lambda t: t.success,
        "done": lambda t: t.done,
        "truncated": lambda t: t.truncated,
        "tick": lambda t: t.tick,
        "chunk_index": lambda t: t.chunk_index,
        "chunk_step": lambda t: t.chunk_step,
        "head_version": lambda t: t.head_version,
        "base_version": lambda t: t.base_version,
        "reward": lambda t: np.float32(t.reward),
        "tick_lateness_ms": lambda t: np.float32(t.lateness_ms),
        "wall_time": lambda t: t.obs_time,
        "obs_time": lambda t: t.obs_time,
        "send_time": lambda t: t.send_time,
    }
    if "policy_features" in cols:
        expect["policy_features"] = lambda t: np.asarray(t.features, np.float32)
    episodes = sorted({t.episode for t in ticks})
    for i, t in enumerate(ticks):
        assert cols["episode_index"][i] == episodes.index(t.episode)
        assert cols["frame_index"][i] == t.tick
        for key, fn in expect.items():
            got, want = np.asarray(cols[key][i]), np.asarray(fn(t), ds.features[key]["dtype"])
            assert got.dtype == np.dtype(ds.features[key]["dtype"]), (key, got.dtype)
            assert np.array_equal(got, want.reshape(got.shape)), (i, key, got, want)
    for index in range(ds.num_episodes):
        first = ds.meta.episodes[index]["dataset_from_index"]
        assert ds[first]["task"] == tasks_by_episode[index]


@pytest.fixture(scope="module")
def recorded_session(tmp_path_factory):
    """A recorded MetaWorld session: 2 episodes, 2 cameras, a scripted operator taking over a poor policy."""
    root = tmp_path_factory.mktemp("rec") / "demos"
    cfg = compose_run([
        "policy=scripted", "robot.task=pick-place-v3", "robot.cameras=[corner,topview]", "robot.realtime=false",
        "robot.max_episode_steps=50", "session.episodes=2", "session.horizon=10", "teleop=scripted",
        "safety.max_delta=0.4", *POOR_POLICY, "record.enabled=true", f"record.root={root}",
    ])  # fmt: skip
    capture = Capture()
    live = []
    session = Session(cfg, sinks=[capture, ChunkAssembler("robot0", 10, live.append)])
    summary = session.run()
    return root, capture, live, summary


def test_session_frames_read_back_equal_what_the_loop_sent(recorded_session):
    root, capture, _, summary = recorded_session
    assert summary.recording["dropped"] == 0 and summary.recording["errors"] == []
    assert summary.recording["frames_committed"] == len(capture.ticks)
    assert sum(t.is_intervention for t in capture.ticks) > 0, "the scenario should include takeovers"
    ds = load(root)
    assert ds.num_episodes == 2 and len(ds) == len(capture.ticks)
    assert_frames_equal(ds, capture.ticks, capture.tasks)
    outcomes = read_outcomes(root)
    assert [outcomes[i]["outcome"] for i in range(2)] == [r.outcome for r in capture.results]
    assert [outcomes[i]["length"] for i in range(2)] == [r.steps for r in capture.results]
    assert not any(o["recovered"] for o in outcomes.values())
    assert list(spool_dir(root).iterdir()) == [], "committed episodes leave the spool"


def test_session_videos_decode_to_the_recorded_frames(recorded_session):
    root, capture, _, _ = recorded_session
    ds = load(root)
    errors = []
    for i in range(0, len(capture.ticks), 9):
        item = ds[i]
        for cam in ("corner", "topview"):
            key = IMAGE_PREFIX + cam
            decoded = (item[key].numpy().transpose(1, 2, 0) * 255.0).astype(np.float32)
            errors.append(np.abs(decoded - capture.ticks[i].observation[key].astype(np.float32)).mean())
    # h264 (crf 30) on 96x96 renders: a few grey levels of mean error; a wrong frame is off by tens
    assert max(errors) < 6.0, errors


def test_chunk_records_rebuilt_from_the_dataset_equal_the_live_ones(recorded_session):
    root, _, live, _ = recorded_session
    # the live stream's one addition: a truncated episode's final observation, which no dataset keeps
    finals = [r for r in live if r.is_final_observation]
    live = [r for r in live if not r.is_final_observation]
    assert [r.episode_id for r in finals] == [r.episode_id for r in live if r.truncated]
    rebuilt = load_chunk_records(root, 10, "robot0", episode_ids="session")
    assert len(rebuilt) == len(live) > 0
    for a, b in zip(rebuilt, live, strict=True):
        assert a.equals(b), a.key
    by_index = load_chunk_records(root, 10, "robot0")
    assert [r.episode_id for r in by_index] == [r.episode_id for r in live]  # one session: same numbering
    assert any(r.intervention.any() for r in rebuilt) and any(r.takeover_start.any() for r in rebuilt)


def synthetic_ticks(episode, n, rng, feature_dim=6, size=32):
    """Ticks with every field varying: interventions, a takeover, versions, features, float64 times."""
    out = []
    for k in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        img[..., 0] = (k * 7) % 256
        img[k % size, :, 1] = 255
        out.append(TickRecord(
            episode=episode, tick=k,
            observation={STATE_KEY: rng.normal(size=7).astype(np.float32), IMAGE_PREFIX + "cam": img},
            base_action=rng.normal(size=3).astype(np.float32), head_action=rng.normal(size=3).astype(np.float32),
            action=rng.normal(size=3).astype(np.float32), is_intervention=10 <= k < 20, takeover_start=k == 10,
            starved=k == 3, chunk_index=k // 8, chunk_step=k % 8, head_version=1 + k // 16, base_version=4,
            features=rng.normal(size=feature_dim).astype(np.float16), reward=float(rng.normal()),
            success=k == n - 1, done=k == n - 1, truncated=False, obs_time=time.time() + k * 1e-7,
            send_time=time.time() + 1e-3, lateness_ms=float(rng.uniform(0, 2)),
        ))  # fmt: skip
    return out


def make_recorder(root, **overrides):
    obs = {STATE_KEY: Feature("float32", (7,)), IMAGE_PREFIX + "cam": Feature("uint8", (32, 32, 3))}
    action = Feature("float32", (3,), names=("x", "y", "z"))
    config = RecordConfig(enabled=True, root=str(root), **overrides)
    return Recorder(config, obs, action, fps=50, feature_dim=6, robot_type="synthetic")


def run_episode(recorder, assembler, e, ticks, before_end=lambda: None, after_first=lambda: None):
    for sink in (recorder, assembler):
        sink.start_episode(e, f"task {e % 2}")
    for i, t in enumerate(ticks):
        recorder.on_tick(t)
        assembler.on_tick(t)
        if i == 0:
            after_first()
    before_end()
    result = EpisodeResult(e, e, len(ticks), True, "success", 1.0, 1, 10, 1)
    recorder.end_episode(result)
    assembler.end_episode(result)


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory):
    """Two episodes recorded normally, then a third while the spool's disk stalls (the queue overflows)."""
    root = tmp_path_factory.mktemp("synth") / "ds"
    rng = np.random.default_rng(0)
    episodes = [synthetic_ticks(0, 37, rng), synthetic_ticks(1, 21, rng)]
    stalled = synthetic_ticks(2, 530, rng)
    live = []
    assembler = ChunkAssembler("synth", 8, live.append)
    recorder = make_recorder(root, queue_size=500).start()
    disk, stalled_on_write = threading.Event(), threading.Event()
    append = SpoolEpisodeWriter.append

    def stalling_append(self, row):  # a disk that hangs until released (the lowest level: the write)
        stalled_on_write.set()
        disk.wait()
        append(self, row)

    try:
        for e, ticks in enumerate(episodes):
            run_episode(recorder, assembler, e, ticks)
        deadline = time.monotonic() + 30
        # The disk stalls from episode 2 on: wait until episode 1's ticks *and* its end marker are taken
        # off the queue, or the marker would hold a queue slot and shift the drop count by one.
        while (recorder.written < 58 or recorder._queue.qsize() > 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(SpoolEpisodeWriter, "append", stalling_append)
            # the writer takes episode 2's first tick and hangs on its write before the rest arrive, so
            # the queue then fills with ticks 1..500 whatever the machine's load
            run_episode(recorder, assembler, 2, stalled, before_end=disk.set,
                        after_first=lambda: stalled_on_write.wait(30))
    finally:
        disk.set()
        stats = recorder.close()
    return root, episodes, stalled, live, stats


def test_synthetic_ticks_with_policy_features_round_trip_and_replay(synthetic_dataset, capsys):
    root, episodes, stalled, live, stats = synthetic_dataset
    ds = load(root)
    assert ds.num_episodes == 3 and len(ds) == stats["frames_committed"] == stats["written"]
    assert_frames_equal(ds, [t for ep in episodes for t in ep], ["task 0", "task 1", "task 0"])
    rebuilt = load_chunk_records(root, 8, "synth", episode_ids="session")
    assert len(rebuilt) >= len(live[:8]) and len(live[:8]) == 5 + 3
    assert all(a.equals(b) for a, b in zip(rebuilt[:8], live[:8], strict=True))
    assert rebuilt[0].features.dtype == np.float16 and rebuilt[0].features.shape == (6,)

    assert tandem_main(["replay", str(root), "--horizon", "8"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 3 and summary["frames"] == len(ds)
    assert summary["outcomes"] == {"success": 3}
    files = sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet"))
    assert files == [f"data/chunk-000/file-00{i}.parquet" for i in range(3)], "one data file per episode"


def test_a_full_queue_drops_ticks_counts_and_reports_them(synthetic_dataset, caplog):
    root, episodes, stalled, _, stats = synthetic_dataset
    assert stats["ticks"] == 58 + len(stalled)
    # the stalled writer holds tick 0, the queue ticks 1..500; the rest are dropped
    assert stats["dropped"] == len(stalled) - 500 - 1
    assert stats["written"] + stats["dropped"] == stats["ticks"]
    assert stats["frames_committed"] == stats["written"]
    entry = read_outcomes(root)[2]
    assert entry["dropped_ticks"] == stats["dropped"] and entry["length"] == len(stalled) - stats["dropped"]
    table = load(root).hf_dataset.with_format(None)[:]
    kept = [t for t, e in zip(table["tick"], table["episode_index"], strict=True) if e == 2]
    assert kept == list(range(len(kept))), "the queue keeps the oldest ticks; the newest are dropped"


def test_a_full_queue_logs_a_warning(tmp_path, caplog):
    recorder = make_recorder(tmp_path / "ds", queue_size=1)
    recorder._in_episode = True  # no start(): nothing drains the queue
    rng = np.random.default_rng(3)
    for t in synthetic_ticks(0, 3, rng):
        recorder.on_tick(t)
    assert recorder.stats()["dropped"] == 2
    assert "dropping ticks" in caplog.text


def test_recording_into_a_directory_that_is_not_a_dataset_is_refused(tmp_path):
    from tandem.core.errors import ConfigError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="record.root"):
        make_recorder(tmp_path).start()
    # record.root="" is valid in the config (tandem run fills in <run_dir>/dataset), never for a recorder
    assert RecordConfig().enabled and RecordConfig().root == ""
    with pytest.raises(ConfigError, match="record.root"):
        make_recorder("")
    with pytest.raises(ConfigError, match="record.root"):
        RecordConfig(root=None)
