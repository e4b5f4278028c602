"""The converter's video encoder (runtime/recording/video_encoder.py): frames from the spool straight into
videos, never dropped, in order; failures reported; its settings validated; datasets written either way
(``record.video_encoder`` "stream" and "lerobot") read back with lerobot."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from test_recorder import make_recorder, synthetic_ticks

from tandem.core.errors import ConfigError
from tandem.hardware.features import IMAGE_PREFIX
from tandem.runtime.control.loop import EpisodeResult
from tandem.runtime.recording.recorder import RecordConfig
from tandem.runtime.recording.video_encoder import SpoolVideoEncoder, VideoEncodeError

W, H = 64, 48


def frame(k: int) -> np.ndarray:
    """A flat frame whose grey level encodes its index k (0..39): uint8 [H, W, 3]."""
    return np.full((H, W, 3), 20 + 5 * k, np.uint8)


def decoded_levels(path) -> list[float]:
    """Mean grey level of every frame of the video at ``path``, in order."""
    with av.open(str(path)) as container:
        return [float(f.to_ndarray(format="rgb24").mean()) for f in container.decode(video=0)]


def test_a_full_queue_blocks_the_converter_instead_of_dropping_frames_and_keeps_their_order(tmp_path):
    encoder = SpoolVideoEncoder(fps=10, vcodec="h264", preset="ultrafast", queue_frames=1)
    encoder.plan(40)
    encoder.start_episode([IMAGE_PREFIX + "a", IMAGE_PREFIX + "b"], tmp_path)
    for k in range(40):  # far faster than an encoder takes them: each put waits for room
        encoder.feed_frame(IMAGE_PREFIX + "a", frame(k))
        encoder.feed_frame(IMAGE_PREFIX + "b", frame(39 - k))
    out = encoder.finish_episode()
    levels_a = decoded_levels(out[IMAGE_PREFIX + "a"][0])
    levels_b = decoded_levels(out[IMAGE_PREFIX + "b"][0])
    assert len(levels_a) == len(levels_b) == 40
    np.testing.assert_allclose(levels_a, [20 + 5 * k for k in range(40)], atol=3)
    np.testing.assert_allclose(levels_b, [20 + 5 * (39 - k) for k in range(40)], atol=3)
    stats = out[IMAGE_PREFIX + "a"][1]
    # lerobot's form (keepdims over [N, C, h, w]; scaled by save_episode), the frames' true spread (not 0)
    assert stats["mean"].shape == (1, 3, 1, 1) and stats["count"].tolist() == [40]
    np.testing.assert_allclose(stats["mean"].ravel(), 20 + 5 * 19.5, atol=0.01)
    np.testing.assert_allclose(stats["std"].ravel(), np.std(20 + 5 * np.arange(40)), rtol=1e-3)


def test_an_encoder_failure_is_raised_and_leaves_no_partial_video(tmp_path):
    encoder = SpoolVideoEncoder(fps=10)
    encoder.vcodec = "no-such-codec"
    encoder.start_episode([IMAGE_PREFIX + "a"], tmp_path)
    with pytest.raises(VideoEncodeError, match="tandem: encoding observation.images.a failed"):
        for k in range(20):
            encoder.feed_frame(IMAGE_PREFIX + "a", frame(k))
        encoder.finish_episode()
    encoder.cancel_episode()
    assert list(tmp_path.iterdir()) == []
    # the failure found at finish_episode, with the dead thread's queue full: raised, not a hang
    encoder = SpoolVideoEncoder(fps=10, queue_frames=1)
    encoder.vcodec = "no-such-codec"
    encoder.start_episode([IMAGE_PREFIX + "a"], tmp_path)
    encoder.feed_frame(IMAGE_PREFIX + "a", frame(0))
    encoder._cameras[IMAGE_PREFIX + "a"].thread.join(10)
    encoder._cameras[IMAGE_PREFIX + "a"].frames.put(frame(1))  # what a feed racing the failure leaves queued
    with pytest.raises(VideoEncodeError, match="0 of 1 frames encoded"):
        encoder.finish_episode()
    assert list(tmp_path.iterdir()) == []


def test_the_encoder_settings_are_validated():
    assert RecordConfig().video_encoder == "stream" and RecordConfig().vcodec == "h264"
    RecordConfig(vcodec="libsvtav1", preset="10")
    RecordConfig(vcodec="hevc", preset="")
    for bad in ({"preset": "fastest"}, {"vcodec": "libsvtav1", "preset": "ultrafast"},
                {"vcodec": "libsvtav1", "preset": "14"}, {"preset": 3}):
        with pytest.raises(ConfigError, match="record.preset"):
            RecordConfig(**bad)
    with pytest.raises(ConfigError, match="record.video_encoder"):
        RecordConfig(video_encoder="png")


@pytest.mark.parametrize("video_encoder", ["stream", "lerobot"])
def test_a_dataset_written_by_either_encoder_reads_back_with_lerobot(tmp_path, video_encoder):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "ds"
    ticks = synthetic_ticks(0, 30, np.random.default_rng(0))
    recorder = make_recorder(root, video_encoder=video_encoder, close_timeout_s=120).start()
    recorder.start_episode(0, "task 0")
    for t in ticks:
        recorder.on_tick(t)
    recorder.end_episode(EpisodeResult(0, 0, len(ticks), True, "success", 1.0, 0, 0, 0))
    stats = recorder.close()
    assert stats["frames_committed"] == 30 and stats["errors"] == []

    ds = LeRobotDataset("local/ds", root=root)
    assert ds.num_frames == 30
    key = IMAGE_PREFIX + "cam"
    originals = np.stack([t.observation[key] for t in ticks]).astype(np.float32)
    for i in (0, 7, 29):  # each decoded frame is nearest to the frame recorded at its index (lossy, in order)
        decoded = ds[i][key].numpy().transpose(1, 2, 0) * 255.0
        assert np.abs(originals - decoded).mean(axis=(1, 2, 3)).argmin() == i
    image_stats = json.loads((root / "meta" / "stats.json").read_text())[key]
    assert np.asarray(image_stats["mean"]).shape == (3, 1, 1)
    if video_encoder == "stream":  # lerobot's PNG path reports std 0 for uint8 images (its uint8 squares)
        assert np.asarray(image_stats["std"]).max() > 0
