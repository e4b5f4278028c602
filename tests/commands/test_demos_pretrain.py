"""`tandem demos` -> `tandem pretrain` -> a checkpoint that loads and runs, as a user runs them (subprocesses)."""

import json
import subprocess
import sys

import numpy as np

TANDEM = [sys.executable, "-m", "tandem.cli"]


def run_cli(args):
    return subprocess.run(TANDEM + args, capture_output=True, text=True, timeout=600)


def test_demos_then_pretrain_then_the_checkpoint_runs(tmp_path):
    data, out = tmp_path / "demos", tmp_path / "ckpt"
    demos = run_cli(["demos", "session.episodes=2", f"record.root={data}", "robot.suite=[reach-v3,push-v3]",
                     "robot.max_episode_steps=100", f"session.run_dir={tmp_path / 'run'}"])
    assert demos.returncode == 0, demos.stderr[-3000:]
    assert "recorded 2 episodes" in demos.stdout
    info = json.loads((data / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2 and "observation.images.corner" in info["features"]

    pre = run_cli(["pretrain", f"dataset={data}", f"out={out}", "steps=4", "batch_size=8", "warmup_steps=1",
                   "eval_episodes=1", "eval_max_steps=10", "model.chunk_length=8"])
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert "tandem pretrain: wrote" in pre.stdout
    assert "pretrain" in pre.stderr  # the progress bar
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["type"] == "tiny_vla" and cfg["meta"]["steps"] == 4
    assert set(cfg["meta"]["history"][-1]["eval"]["per_task"]) == {"reach-v3", "push-v3"}
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()

    from tandem.hardware.metaworld_robot import TASK_INSTRUCTIONS, MetaWorldRobot, MetaWorldRobotConfig
    from tandem.policies.tiny_vla.policy import TinyVLAPolicy, TinyVLAPolicyConfig

    policy = TinyVLAPolicy(TinyVLAPolicyConfig(path=str(out), device="cpu"), MetaWorldRobot(MetaWorldRobotConfig()))
    chunk = policy.infer({"observation.state": np.zeros(39, np.float32),
                          "observation.images.corner": np.zeros((96, 96, 3), np.uint8)}, TASK_INSTRUCTIONS["push-v3"])
    assert chunk.actions.shape == (8, 4) and chunk.features.shape == (128,) and chunk.version == 1


def test_pretrain_on_a_missing_dataset_fails_clearly(tmp_path):
    out = run_cli(["pretrain", f"dataset={tmp_path / 'nothing'}", f"out={tmp_path / 'ckpt'}"])
    assert out.returncode == 2
    assert "is not a LeRobotDataset" in out.stderr
