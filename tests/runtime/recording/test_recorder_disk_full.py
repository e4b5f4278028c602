"""Issue #24 defect 4, recorder side: a full disk pauses recording, never kills the writer.

The disk fills at an episode boundary (the episode's ``end.json`` cannot be written), stays full while the
next episode starts (its spool header cannot be written) and part of it runs, then space comes back. The
full disk is simulated at the lowest write call (``faults_testkit.DiskFull``: ``os.write`` fails with
ENOSPC for files under the dataset's spool), in this process only; the converter process writes the
dataset normally.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from faults_testkit import DiskFull

from tandem.core.errors import ConfigError
from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY, Feature
from tandem.runtime.control.loop import EpisodeResult, TickRecord
from tandem.runtime.links.from_dataset import read_outcomes
from tandem.runtime.recording.dataset_store import spool_dir
from tandem.runtime.recording.recorder import RecordConfig, Recorder


def ticks(episode: int, n: int, first: int = 0) -> list[TickRecord]:
    rng = np.random.default_rng(episode)
    return [TickRecord(
        episode=episode, tick=k, observation={STATE_KEY: rng.normal(size=7).astype(np.float32),
                                              IMAGE_PREFIX + "cam": np.full((16, 16, 3), k % 255, np.uint8)},
        base_action=np.zeros(3, np.float32), head_action=np.zeros(3, np.float32), action=np.ones(3, np.float32),
        is_intervention=False, takeover_start=False, starved=False, chunk_index=k // 8, chunk_step=k % 8,
        head_version=0, base_version=0, features=np.zeros(0, np.float16), reward=0.5, success=False, done=False,
        truncated=False, obs_time=time.time(), send_time=time.time(), lateness_ms=0.0,
    ) for k in range(first, first + n)]  # fmt: skip


def recorder(root) -> Recorder:
    obs = {STATE_KEY: Feature("float32", (7,)), IMAGE_PREFIX + "cam": Feature("uint8", (16, 16, 3))}
    config = RecordConfig(enabled=True, root=str(root), vcodec="h264", close_timeout_s=120)
    return Recorder(config, obs, Feature("float32", (3,)), fps=50, robot_type="synthetic")


def until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def end(rec: Recorder, episode: int, steps: int) -> None:
    rec.end_episode(EpisodeResult(episode, episode, steps, False, "timeout", 0.0, 0, 0, 0))


def test_a_full_disk_at_an_episode_boundary_pauses_recording_and_every_lost_tick_is_counted(tmp_path):
    root = tmp_path / "ds"
    rec = recorder(root).start()
    try:
        with DiskFull(spool_dir(root)) as disk:
            rec.start_episode(0, "task")
            for t in ticks(0, 30):
                rec.on_tick(t)
            end(rec, 0, 30)
            until(lambda: rec.episodes_spooled == 1)
            rec.start_episode(1, "task")
            for t in ticks(1, 20):
                rec.on_tick(t)
            until(lambda: rec.written == 50)
            disk.full = True  # the disk fills: episode 1's end.json cannot be written
            end(rec, 1, 20)
            rec.start_episode(2, "task")  # nor episode 2's spool header
            for t in ticks(2, 15):
                rec.on_tick(t)
            until(lambda: rec.dropped_disk == 15)
            assert rec._thread.is_alive() and rec.stats()["errors"], rec.stats()
            disk.full = False  # space comes back mid-episode
            for t in ticks(2, 10, first=15):
                rec.on_tick(t)
            end(rec, 2, 25)
            rec.start_episode(3, "task")
            for t in ticks(3, 12):
                rec.on_tick(t)
            end(rec, 3, 12)
            until(lambda: rec.episodes_spooled == 4)
    finally:
        stats = rec.close()
    assert stats["ticks"] == 30 + 20 + 25 + 12
    assert stats["dropped_disk"] == 15 and stats["dropped"] == 15 and stats["dropped_queue_full"] == 0
    assert stats["written"] + stats["dropped"] == stats["ticks"]
    assert stats["disk_pauses"] == 1 and any("No space left" in e for e in stats["errors"])
    assert stats["episodes_committed"] == 4 and stats["frames_committed"] == 30 + 20 + 10 + 12
    outcomes = read_outcomes(root)
    assert [outcomes[i]["length"] for i in range(4)] == [30, 20, 10, 12]
    assert outcomes[2]["dropped_ticks"] == 15 and outcomes[1]["dropped_ticks"] == 0


def test_an_unwritable_record_root_is_a_config_error(tmp_path):
    """Defect 8: an unwritable record.root used to end in a traceback."""
    if os.geteuid() == 0:  # root writes anywhere: a file where a directory is needed fails the same way
        (tmp_path / "file").write_text("")
        root = tmp_path / "file" / "ds"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        root = tmp_path / "ro" / "ds"
    with pytest.raises(ConfigError, match="record.root=.*cannot be written"):
        recorder(root).start()
