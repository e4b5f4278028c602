"""``tandem run`` records every session by default, into ``<run_dir>/dataset``."""

import json
import subprocess
import sys

import numpy as np

TANDEM = [sys.executable, "-m", "tandem.cli"]
COMMON = ["run", "policy=scripted", "robot.realtime=false", "robot.task=reach-v3", "robot.max_episode_steps=40",
          "session.episodes=2", "teleop=scripted", "status_line.enabled=false"]


def test_a_default_run_leaves_a_dataset_lerobot_loads_with_chunk_and_takeover_fields(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = subprocess.run(TANDEM + [*COMMON, "robot.cameras=[corner]", f"session.run_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    root = tmp_path / "dataset"
    assert f"into {root}" in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["recording"]["episodes_committed"] == 2 and summary["recording"]["dropped"] == 0
    ds = LeRobotDataset("local/dataset", root=root)
    steps = sum(e["steps"] for e in summary["episodes"])
    assert ds.num_episodes == 2 and len(ds) == steps
    for key in ("chunk_index", "chunk_step", "is_intervention", "takeover_start", "capture_time",
                "observation.images.corner"):
        assert key in ds.features, key
    cols = ds.hf_dataset.with_format(None)
    chunk_index, tick = np.asarray(cols["chunk_index"]).ravel(), np.asarray(cols["tick"]).ravel()
    np.testing.assert_array_equal(chunk_index, tick // 10)  # session.horizon=10
    capture, send = np.asarray(cols["capture_time"]).ravel(), np.asarray(cols["send_time"]).ravel()
    assert np.all(capture > 1.6e9) and np.all(capture <= send)  # wall clock, before the action went out
    item = ds[len(ds) - 1]
    assert item["observation.images.corner"].shape[0] == 3


def test_record_enabled_false_records_nothing(tmp_path):
    out = subprocess.run(TANDEM + [*COMMON, "robot.cameras=[]", "record.enabled=false",
                                   f"session.run_dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp_path / "dataset").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["recording"] == {}
