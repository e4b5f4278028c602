"""Recording at real camera sizes (640x480): the queue is bounded in bytes, nothing is dropped silently.

Two 640x480 RGB cameras at 30 Hz are about 55 MB/s of raw pixels. The recorder's queue between the
control thread and the writer holds at most ``tick_spool.QUEUE_BYTES`` of records, whatever
``record.queue_size`` says, so a stalled writer costs bounded memory and counted drops, never an
unbounded resident set.
"""

from __future__ import annotations

import numpy as np

from tandem.bench.recorder import bench_recorder, rss_mb
from tandem.cli import build_parser
from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY, Feature
from tandem.runtime.control.loop import TickRecord
from tandem.runtime.recording.recorder import RecordConfig, Recorder
from tandem.runtime.recording.tick_spool import QUEUE_BYTES, queue_capacity

W, H = 640, 480
MIB = 2**20


def features(cameras: int = 2) -> dict[str, Feature]:
    obs = {STATE_KEY: Feature("float32", (39,))}
    obs.update({f"{IMAGE_PREFIX}cam{i}": Feature("uint8", (H, W, 3)) for i in range(cameras)})
    return obs


ACTION = Feature("float32", (4,), names=("dx", "dy", "dz", "gripper"), low=(-1.0,) * 4, high=(1.0,) * 4)


def tick(k: int, observation: dict) -> TickRecord:
    zeros = np.zeros(4, np.float32)
    return TickRecord(
        episode=0, tick=k, observation=observation, base_action=zeros, head_action=zeros, action=zeros,
        is_intervention=False, takeover_start=False, starved=False, chunk_index=k // 10, chunk_step=k % 10,
        head_version=0, base_version=0, features=np.zeros(0, np.float16), reward=0.0, success=False, done=False,
        truncated=False, obs_time=1.0, send_time=1.0, lateness_ms=0.0,
    )  # fmt: skip


def test_queue_capacity_is_bounded_in_bytes():
    assert queue_capacity(500, 56_000) == 500  # small cameras: record.queue_size rules
    record = 2 * W * H * 3 + 400
    assert queue_capacity(500, record) == QUEUE_BYTES // record == 145
    assert queue_capacity(500, 10 * QUEUE_BYTES) == 1  # never zero: one record always fits
    assert queue_capacity(3, record) == 3


def test_stalled_writer_costs_bounded_memory_and_counted_drops(tmp_path):
    """The writer never runs (not started): 400 ticks of two 640x480 cameras (700 MB raw) arrive.

    The queue takes what fits in its byte budget, every other tick is dropped and counted, and the
    resident set grows by about the queue's bound, not by 700 MB."""
    recorder = Recorder(RecordConfig(root=str(tmp_path / "ds"), queue_size=500), features(), ACTION, fps=30)
    capacity = recorder.queue_capacity
    assert capacity * recorder.schema.record_bytes <= QUEUE_BYTES
    assert capacity < 500
    frames = {f"{IMAGE_PREFIX}cam{i}": np.full((H, W, 3), i, np.uint8) for i in range(2)}
    observation = {STATE_KEY: np.zeros(39, np.float32), **frames}
    before = rss_mb()
    recorder.start_episode(0, "t")  # one queue slot
    for k in range(400):
        recorder.on_tick(tick(k, observation))
    grown = rss_mb() - before
    stats = recorder.stats()
    assert stats["ticks"] == 400
    assert stats["dropped_queue_full"] == 400 - (capacity - 1)
    assert stats["queue_high_water"] == capacity
    bound_mb = capacity * recorder.schema.record_bytes / MIB
    assert grown < bound_mb + 64, (grown, bound_mb)


def test_bench_recorder_640x480_spools_every_tick_and_reports_memory():
    """2 s of two 640x480 cameras at 30 Hz through the real recorder: every tick reaches the spool.

    The converter gets 1 s after the loop (converting 640x480 frames takes lerobot far longer on this
    machine); what it left is reported, not hidden."""
    out = bench_recorder(seconds=2.0, hz=30, cameras=2, width=W, height=H, episode_s=1.0, drain_timeout_s=1.0)
    assert out["cameras"] == ["corner 640x480", "topview 640x480"]
    assert out["ticks"] == 60
    assert out["dropped"] == 0
    assert out["spooled_ticks"] == 60
    assert out["queue_capacity"] == 145
    assert out["queue_high_water"] <= out["queue_capacity"]
    assert out["rss_peak_mb"] >= out["rss_before_mb"] > 0
    assert out["recorder_rss_mb"] <= out["queue_bound_mb"] + 64
    assert out["frames_recorded"] + out["spool_left_uncommitted_mb"] > 0  # committed, or still in the spool


def test_bench_cli_takes_camera_flags():
    args = build_parser().parse_args(
        ["bench", "recorder", "--cameras", "2", "--width", "640", "--height", "480", "--hz", "30", "--seconds", "300"]
    )
    assert (args.cameras, args.width, args.height, args.hz, args.seconds) == (2, 640, 480, 30.0, 300.0)
    assert args.drain_timeout == 300.0


def test_reading_a_640x480_spool_episode_back_keeps_memory_at_a_record(tmp_path):
    """The converter reads a spooled episode record by record: 100 ticks of two 640x480 cameras (176 MiB)
    read back exactly, with the resident set growing by far less than the episode (a memory map of it
    kept every page it touched resident)."""
    from tandem.runtime.recording.tick_spool import TICKS, SpoolEpisodeWriter, SpoolSchema, read_spool_episode

    schema = SpoolSchema.build(features(), ACTION)
    directory = tmp_path / "000001-000000"
    writer = SpoolEpisodeWriter(directory, {"features": schema.features, "session": 1}, schema.dtype)
    row = np.zeros(1, schema.dtype)
    for k in range(100):
        row[f"{IMAGE_PREFIX}cam0"] = k
        row[f"{IMAGE_PREFIX}cam1"] = 255 - k
        row["tick"] = k
        writer.append(row)
    writer.finish({"outcome": "success"})
    with open(directory / TICKS, "ab") as f:  # a torn tail is still dropped
        f.write(b"\x31\x53\x44\x54" + b"\x00" * 100)
    episode_mb = 100 * schema.record_bytes / MIB
    before = rss_mb()
    episode = read_spool_episode(directory)
    rows = episode.rows
    assert len(rows) == 100 and episode.torn_bytes == 104 and episode.complete
    columns = {k: rows[k] for k in episode.header["features"]}
    assert rows["tick"][-1, 0] == 99 and rows["done"][-1, 0] == 0
    for k in range(100):
        frame = {key: np.array(column[k]) for key, column in columns.items()}
        assert frame[f"{IMAGE_PREFIX}cam0"].shape == (H, W, 3)
        assert frame[f"{IMAGE_PREFIX}cam0"][0, 0, 0] == k and frame[f"{IMAGE_PREFIX}cam1"][-1, -1, -1] == 255 - k
        assert frame["tick"][0] == k
    grown = rss_mb() - before
    assert episode_mb > 170
    assert grown < 32, (grown, episode_mb)
    assert np.array_equal(np.asarray(rows["tick"])[:, 0], np.arange(100))
