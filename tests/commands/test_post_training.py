"""The post-training loop end to end: robot + spawned learner + weight pushes, through `tandem run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tandem.policies.heads.config import Dims, HeadConfig
from tandem.reports.calibration import auc, load_critic
from tandem.value.replay import record_entries

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_robot_learner_loop_td_error_falls_and_head_versions_reach_the_robot(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "tandem.cli", "run",
        "policy=scripted", "policy.noise_std=0.3", "policy.chunk_length=10", "session.backend=inline",
        "robot.task=reach-v3", "robot.cameras=[]", "robot.max_episode_steps=100", "robot.realtime=true",
        "loop.stop_on_success=false",
        "teleop=scripted", "head=edit", "head.critic.hidden=[64,64]", "head.head.hidden=[64,64]",
        "head.critic_objective.warmup_steps=50", "learn.spawn=true", "session.episodes=10",
        "learn.learner.batch_size=64", "learn.learner.min_records=16", "learn.learner.publish_every_updates=25",
        "+learn.learner.status_every_s=0.5", "link.learner_updates_per_episode=40", f"session.run_dir={run_dir}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "learner stopped (exit 0)" in out, out[-2000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    links = summary["links"]
    assert links["all_acked"], links
    assert links["weights"]["applied"] >= 1, links["weights"]
    versions = [e["head_version"] for e in summary["episodes"]]
    assert versions[-1] >= 1 and versions == sorted(versions), versions  # new heads reached the robot, in order

    store = run_dir / "learner"
    lines = [json.loads(x) for x in (store / "metrics.jsonl").read_text().splitlines()]
    td = [ln["metrics"]["critic/td_abs"] for ln in lines if "critic/td_abs" in ln["metrics"]]
    assert len(td) >= 4, lines
    early, late = np.mean(td[: len(td) // 3 or 1]), np.mean(td[-(len(td) // 3 or 1):])
    assert late < 0.7 * early, td  # the critic's TD error falls
    assert lines[-1]["step"] > lines[0]["step"] and lines[-1]["versions"].get("head", 0) >= 1
    learner_summary = json.loads((store / "summary-rank0.json").read_text())
    pacing = links["pacing"]  # the session waited on the learner's heartbeats, never on a dead one
    assert pacing["target"] >= 40 and pacing["learner_lost"] == 0 and pacing["timeouts"] == 0, pacing
    assert learner_summary["step"] >= pacing["target"], (learner_summary["step"], pacing)
    assert learner_summary["replay"]["autonomous"] + learner_summary["replay"]["takeover"] == links["experience"]["acked"]


def test_the_learned_critic_ranks_chunks_that_reach_success_above_chunks_of_failed_episodes(tmp_path):
    """Episodes end in success (a terminal) or at the time limit; after a short session the critic, read from
    the learner's store, scores every success-terminal chunk above the chunks of episodes that failed. An
    untrained critic (or one whose updates are switched off) ranks them at chance."""
    run_dir = tmp_path / "run"
    hidden = "[64,64]"
    cmd = [
        sys.executable, "-m", "tandem.cli", "run",
        "policy=scripted", "policy.noise_std=0.3", "policy.bias=0.3", "policy.chunk_length=10",
        "session.backend=inline", "robot.task=reach-v3", "robot.cameras=[]", "robot.max_episode_steps=50",
        "robot.realtime=false", "teleop=none", "head=edit", f"head.critic.hidden={hidden}",
        f"head.head.hidden={hidden}", "learn.spawn=true", "session.episodes=12", "learn.learner.batch_size=64",
        "learn.learner.min_records=16", "link.learner_updates_per_episode=60", "status_line.enabled=false",
        f"session.run_dir={run_dir}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    store = run_dir / "learner"
    records = [r for _, r in record_entries(store / "replay") if r is not None]
    by_episode: dict[int, list] = {}
    for r in records:
        by_episode.setdefault(r.episode_id, []).append(r)
    reached = [rs[-1] for rs in by_episode.values() if rs[-1].done and not rs[-1].failed]
    failed = [r for rs in by_episode.values() if not rs[-1].done for r in rs]
    assert reached and failed, f"need both outcomes: {len(reached)} successes, {len(by_episode)} episodes"

    head = HeadConfig(type="edit", critic={"hidden": [64, 64]})
    first = records[0]
    critic = load_critic(store, head, Dims(len(first.state), len(first.features), *first.executed.shape))

    def q(rs: list) -> np.ndarray:
        with torch.no_grad():
            return critic.q_values(torch.as_tensor(np.stack([r.state for r in rs])),
                                   torch.as_tensor(np.stack([r.features for r in rs])),
                                   torch.as_tensor(np.stack([r.executed for r in rs]))).mean(0).numpy()

    score = auc(q(reached), q(failed))
    assert score >= 0.9, (score, q(reached), q(failed)[:10])
