"""Camera images in chunk records (link.image_size): JPEG at the configured size, size-limited, carried
through the wire format and the learner's replay to its batches (``value/record_extras.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from links_testkit import make_record

from tandem.core.errors import ConfigError
from tandem.protocol.messages import message_to_record, record_to_message
from tandem.runtime.links.chunks import ChunkAssembler
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.images import ChunkImages
from tandem.value.objectives.base_awr import decode_jpeg_batch
from tandem.value.record_extras import ExtrasStore, RecordExtras
from tandem.value.replay import ReplayStore

CAM = "observation.images.corner"


def scene(size: int = 64) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    img[:, : size // 2] = (200, 30, 30)
    img[size // 2 :, size // 2 :] = (20, 20, 220)
    return img


def test_images_are_jpeg_at_the_configured_size_and_dropped_over_the_limit():
    enc = ChunkImages(size=32, quality=90, max_bytes=64 * 1024)
    out = enc({CAM: scene(), "observation.state": np.zeros(39, np.float32)})
    assert list(out) == [CAM] and out[CAM][:2] == b"\xff\xd8"  # a JPEG, and only the camera
    img = decode_jpeg_batch([[out[CAM]]])[0, 0]
    assert img.shape == (32, 32, 3)
    assert np.abs(img.astype(int) - scene(32).astype(int)).mean() < 10  # colours kept (RGB order too)
    noisy = {CAM: np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)}
    small = ChunkImages(size=64, quality=95, max_bytes=1024)
    assert small(noisy) == {} and small.stats.dropped == 1 and small.stats.max_bytes > 1024
    with pytest.raises(ConfigError, match="link.image_quality"):
        LinkConfig(image_size=32, image_quality=0)


def test_the_assembler_attaches_the_first_ticks_images_and_the_wire_keeps_them():
    records = []
    asm = ChunkAssembler("r1", 2, records.append, images=ChunkImages(16, 90, 65536))

    class Tick:  # the attributes build_chunk reads
        def __init__(self, t: int, value: int) -> None:
            img = np.full((16, 16, 3), value, np.uint8)
            self.observation = {CAM: img, "observation.state": np.full(39, t, np.float32)}
            self.tick, self.chunk_index, self.base_window = t, t // 2, None
            self.features = np.zeros(4, np.float16)
            self.base_action = self.head_action = self.action = np.zeros(4, np.float32)
            self.reward, self.is_intervention, self.takeover_start = 0.0, False, False
            self.done = self.truncated = self.failed = False
            self.head_version = self.base_version = 0
            self.obs_time = self.send_time = 0.0

    asm.start_episode(0, "push the puck to the goal")
    for t, v in enumerate([40, 90, 160, 220]):
        asm.on_tick(Tick(t, v))
    assert len(records) == 2
    back = message_to_record(record_to_message(records[1], seq=2, stream="s"))
    img = decode_jpeg_batch([[back.images[CAM]]])[0, 0]
    assert abs(int(img.mean()) - 160) <= 3  # the chunk's first tick (t=2), not its second


def test_the_learner_attaches_task_and_images_to_sampled_rows_and_reads_them_back(tmp_path):
    enc = ChunkImages(16, 90, 65536)
    store = ReplayStore(tmp_path / "replay")
    extras = RecordExtras(1000)
    wrapped = ExtrasStore(store, extras)
    sent = {}
    try:
        for i in range(6):
            rec = make_record("r1", 0, i, seed=i)
            rec.task = f"task {i % 2}"
            rec.images = enc({CAM: np.full((16, 16, 3), 30 * i, np.uint8)})
            sent[i] = rec
            assert wrapped.offer(record_to_message(rec, seq=i + 1, stream="s")) == "stored"
        assert wrapped.size == 6  # everything else is the store's
        batch = extras.attach(store.sample(32, np.random.default_rng(0)))
    finally:
        store.close()
    assert len(batch["task"]) == 32
    for i in range(32):
        k = int(batch["chunk_index"][i])
        assert batch["task"][i] == f"task {k % 2}"
        assert batch["images_jpeg"][i][CAM] == sent[k].images[CAM]
    again = RecordExtras(1000)
    assert again.load(tmp_path / "replay") == 6  # a resumed learner reads them from the log
    assert list(again.attach({k: v[:4] for k, v in batch.items()})["task"]) == list(batch["task"][:4])
    unknown = RecordExtras(10).attach({k: v[:3] for k, v in batch.items()})
    assert list(unknown["task"]) == [None] * 3 and list(unknown["images_jpeg"]) == [{}] * 3
