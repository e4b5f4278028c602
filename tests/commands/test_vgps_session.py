"""head=vgps end to end through `tandem run`: the scripted base on MetaWorld state-only, a spawned learner
training the vgps expectile critic, and its critic weights reaching the robot, which then picks samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tandem.value.replay import record_entries

REPO = Path(__file__).resolve().parents[2]


def test_a_vgps_session_trains_the_critic_and_the_robot_selects_with_its_weights(tmp_path):
    run_dir = tmp_path / "run"
    # 50 Hz wall-clock episodes (1 s each): the learner has an episode's time to ingest the first records and
    # report that it trains, so the pacer waits for it; at robot.realtime=false three short episodes could end
    # before the learner's first update and no critic weights would reach a chunk edge
    cmd = [
        sys.executable, "-m", "tandem.cli", "run",
        "policy=scripted", "policy.noise_std=0.3", "policy.chunk_length=10", "session.backend=inline",
        "robot.task=reach-v3", "robot.cameras=[]", "robot.max_episode_steps=50", "robot.realtime=true",
        "loop.stop_on_success=false", "head=vgps", "head.num_samples=4", "head.critic.hidden=[32,32]",
        "learn.spawn=true", "session.episodes=4", "learn.learner.batch_size=16", "learn.learner.min_records=4",
        "learn.learner.publish_every_updates=5", "link.learner_updates_per_episode=10", f"session.run_dir={run_dir}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "learner stopped (exit 0)" in out, out[-2000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    weights = summary["links"]["weights"]
    assert weights["applied"] >= 1 and weights["rejected"] == 0, weights
    assert set(weights["applied_versions"]) == {"critic"}, weights  # no head network: only the critic is pushed
    versions = [e["head_version"] for e in summary["episodes"]]
    assert versions[-1] >= 1 and versions == sorted(versions), versions  # the critic the robot selects with

    store = run_dir / "learner"
    lines = [json.loads(x) for x in (store / "metrics.jsonl").read_text().splitlines()]
    assert any("critic/value_loss" in ln["metrics"] for ln in lines), lines[-1]  # the vgps expectile critic
    records = [r for _, r in record_entries(store / "replay") if r is not None]
    selected = [r for r in records if r.head_version >= 1]
    assert selected, [r.head_version for r in records]  # chunks chosen under the learner's critic were recorded
    assert all(not np.any(r.head) for r in records)  # vgps never edits: the base it ran is the record's base
