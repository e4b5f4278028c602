"""Session faults on a real arm's code path: lerobot's SO101Follower and FeetechMotorsBus, the serial link faked.

Only the bus's register transfers are fake (``test_lerobot_robot.FakeMotors``); the composed ``robot=so101``
config, lerobot's robot class, tandem's session, policy worker process, safety filter, recorder and learner
are the real ones. What is asserted is what reaches the motors' registers, the dataset lerobot reads back
and the learner's durable replay.

- A SIGKILLed policy worker: the arm holds where it is with torque on while the worker is restarted, then
  the new worker's actions move it again.
- Re-record: the episode leaves neither the recorded LeRobotDataset nor the learner's replay.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from session_testkit import (
    KillThenFinish,
    RerecordOnce,
    dataset_without_rerecorded,
    replay_without_rerecorded,
)
from test_lerobot_robot import DEG_PER_TICK, FakeMotors, write_calibration_file
from test_lerobot_safety import SHOULDER, goals

from tandem.commands.learner_process import LearnerProcess
from tandem.hardware.lerobot_robot import LeRobotRobotConfig
from tandem.policies.tiny_vla.model import TinyVLA, TinyVLAModelConfig, save_checkpoint
from tandem.policies.tiny_vla.tokenizer import build_tokenizer
from tandem.runtime.config import compose_run
from tandem.runtime.session import Session

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# every action of the checkpoint: shoulder_lift to -1 deg (the tiny VLA clips its actions to [-1, 1])
TARGET = np.array([0, -1, 0, 0, 0, 1], np.float32)
START_DEG = 20.0  # where the shoulder stands when the session starts
MAX_DELTA = 0.5  # deg per tick: the arm needs 42 ticks to get to the target, so a fault at tick 10 meets it moving


@pytest.fixture(scope="module")
def reach_checkpoint(tmp_path_factory):
    """A tiny VLA checkpoint for the SO-101 (6 joints in, 6 goals out) whose every action is ``TARGET``
    (action std ~0: the sampled noise moves an action by at most a few 1/1000 deg)."""
    tok = build_tokenizer([LeRobotRobotConfig.instruction], max_length=16)
    torch.manual_seed(0)
    model = TinyVLA(TinyVLAModelConfig(
        state_dim=6, action_dim=6, image_keys=[], dim=16, feature_dim=16, chunk_length=5, head_hidden=32,
        head_blocks=1, vocab_size=len(tok), flow_steps=2,
        text={"model_type": "bert", "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}))
    model.set_stats(np.zeros(6), np.ones(6), TARGET, np.zeros(6))
    path = tmp_path_factory.mktemp("so101") / "reach"
    save_checkpoint(model, tok, path, {"version": 0})
    return path


@pytest.fixture
def motors(monkeypatch):
    fake = FakeMotors()
    fake.install(monkeypatch)
    return fake


def so101_config(tmp_path, checkpoint, *overrides: str):
    """``tandem run robot=so101 policy=tiny_vla`` on the faked port, 20 Hz, recording into ``tmp_path/run``."""
    port = tmp_path / "ttyACM0"
    port.touch()
    write_calibration_file(tmp_path)
    return compose_run(["robot=so101", f"robot.port={port}", "robot.id=arm", f"robot.calibration_dir={tmp_path}",
                        "robot.fps=20", "policy=tiny_vla", f"policy.path={checkpoint}", "session.reset_timeout_s=0",
                        f"safety.max_delta={MAX_DELTA}", "loop.stop_on_success=false",
                        f"session.run_dir={tmp_path / 'run'}", *overrides])


class BusProbe:
    """A sink that notes, after each tick's send, the shoulder goal on the bus and whether every motor's
    torque is on: what the motors were told, not what the loop meant to send."""

    def __init__(self, motors: FakeMotors) -> None:
        self.motors = motors
        self.rows: list[tuple[int, int, bool, float, bool]] = []  # (episode, tick, starved, goal deg, torque on)
        self.writes_at: list[int] = []  # len(motors.writes) after each tick

    def start_episode(self, episode, task):
        pass

    def on_tick(self, record):
        torque = all(self.motors.reg(i, "Torque_Enable") == 1 for i in range(1, 7))
        goal = goals(self.motors, SHOULDER)[-1]
        self.rows.append((record.episode, record.tick, bool(record.starved), goal, torque))
        self.writes_at.append(len(self.motors.writes))

    def end_episode(self, result):
        pass


def test_a_killed_policy_worker_holds_the_arm_with_torque_on_and_a_restarted_worker_moves_it_again(
        tmp_path, motors, reach_checkpoint):
    cfg = so101_config(tmp_path, reach_checkpoint, "session.backend=process", "session.episodes=1",
                       "robot.max_episode_steps=600", "policy_link.max_restarts=1", "policy_link.warmup=2")
    session = Session(cfg)
    session.build()
    script = KillThenFinish(session, kill_tick=10, after_gap=20)
    probe = BusProbe(motors)
    session.controller.operator = script
    session.sinks += [script, probe]
    motors.regs[SHOULDER][motors.addr["Present_Position"]] = 2048 + round(START_DEG / DEG_PER_TICK)
    first_pid = session.backend.process.pid
    summary = session.run()

    assert summary.error == "" and len(summary.episodes) == 1, summary.error
    assert script.killed_pid == first_pid and session.backend.process.pid != first_pid
    assert summary.faults["worker_restarts"] == 1 and summary.episodes[0]["faults"] == {"worker_restarts": 1}

    rows = [r for r in probe.rows if r[0] == 0]
    gap_start = next(i for i, r in enumerate(rows) if r[2] and r[1] > script.kill_tick)
    gap_end = next(i for i in range(gap_start, len(rows)) if not rows[i][2])  # the new worker's first action
    gap, before, after = rows[gap_start:gap_end], rows[gap_start - 1], rows[gap_end:]
    assert len(gap) >= 10, len(gap)  # a restart (spawn, torch, checkpoint) takes seconds: many held ticks at 20 Hz
    held = before[3]
    # the kill met the arm on its way: up to the hold it moved at the rate limit, far from the target
    assert held == pytest.approx(rows[gap_start - 2][3] - MAX_DELTA, abs=DEG_PER_TICK) and held > TARGET[1] + 5
    for _, tick, _, goal, torque in gap:  # held where it stood: no drift, no jump, torque on
        assert goal == pytest.approx(held, abs=DEG_PER_TICK), (tick, goal, held)
        assert torque, tick
    during = motors.writes[probe.writes_at[0]:probe.writes_at[-1]]
    assert not [w for w in during if w[0] == "Torque_Enable" and w[2] == 0]  # torque never went off mid-episode
    # the restarted worker's plan moves it on towards the target at the rate limit, torque still on
    assert len(after) >= 20 and all(r[4] for r in after)
    moved = [r[3] for r in after]
    assert moved[-1] < held - 5 and np.all(np.diff([held, *moved]) >= -MAX_DELTA - DEG_PER_TICK)
    assert summary.episodes[0]["starved_ticks"] >= len(gap)

    entries = [json.loads(x) for x in (tmp_path / "run" / "dataset" / "meta" / "tandem_episodes.jsonl")
               .read_text().splitlines()]
    assert [e["faults"].get("worker_restarts", 0) for e in entries] == [1]


def test_rerecord_on_an_so101_leaves_neither_the_dataset_nor_the_learners_replay_with_the_episode(
        tmp_path, motors, reach_checkpoint):
    cfg = so101_config(tmp_path, reach_checkpoint, "session.backend=thread", "session.episodes=2",
                       "robot.max_episode_steps=30", "learn.spawn=true", "learn.learner.min_records=1000000")
    run_dir = tmp_path / "run"
    learner = LearnerProcess(cfg, run_dir).start()
    try:
        session = Session(cfg)
        session.build()
        session.controller.operator = RerecordOnce(episode=1, tick=15)
        summary = session.run()
    finally:
        assert learner.stop() == 0

    assert summary.error == "", summary.error
    assert [e["episode"] for e in summary.episodes] == [0, 2]
    assert [(e["episode"], e["outcome"], e["steps"]) for e in summary.rerecorded] == [(1, "rerecord", 16)]
    assert summary.recording["episodes_committed"] == 2 and summary.recording["episodes_rerecorded"] == 1
    assert summary.links["all_acked"] and summary.links["experience"]["retractions"] == 1

    frames, _ = dataset_without_rerecorded(run_dir / "dataset", 30)
    # the recorded actions are the SO-101's joint goals: the shoulder rate-limited from 0 to the target's -1 deg
    actions = np.asarray(frames["action"], np.float32)
    assert actions.shape == (60, 6)
    np.testing.assert_allclose(actions[:30, 1], np.maximum(-MAX_DELTA * np.arange(1, 31), -1.0), atol=2 * DEG_PER_TICK)

    replay_without_rerecorded(run_dir / "learner" / "replay")
