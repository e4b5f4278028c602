"""``tandem pretrain``: behaviour cloning of the tiny VLA from a LeRobotDataset.

The config is composed from ``configs/pretrain.yaml`` and the overrides (:func:`compose_pretrain`); the
data, the model and the training loop are :mod:`tandem.policies.tiny_vla.train`. This module adds the
evaluation that needs the runtime: every ``eval_every`` steps (and at the end) the policy runs in
simulation (the same loop, scheduler and safety filter as ``tandem run``, on simulated time) on each task
of the dataset (:func:`evaluate`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tandem.core.config import build_dataclass, compose
from tandem.hardware.features import IMAGE_PREFIX
from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig, task_for_instruction
from tandem.policies.tiny_vla.model import TinyVLA
from tandem.policies.tiny_vla.policy import TinyVLAPolicy, TinyVLAPolicyConfig
from tandem.policies.tiny_vla.train import DemoData, PretrainConfig, train
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.loop import run_episode
from tandem.runtime.control.safety import SafetyConfig, SafetyFilter
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend


def evaluate(model: TinyVLA, tokenizer: Any, data: DemoData, config: PretrainConfig, version: int = 0) -> dict[str, Any]:
    """Success rate of ``model`` in simulation on each task of ``data`` (``eval_episodes`` each).

    Runs the real control loop (scheduler, safety filter) on simulated time with the policy inline.
    """
    tasks = [task_for_instruction(t) for t in data.tasks]
    cams = [k.removeprefix(IMAGE_PREFIX) for k in data.image_keys]
    robot = MetaWorldRobot(MetaWorldRobotConfig(
        task=tasks[0], suite=tasks, cameras=cams, image_size=model.cfg.image_size, realtime=False,
        max_episode_steps=config.eval_max_steps,
    ))
    was_training = model.training
    model.eval()
    policy = TinyVLAPolicy(TinyVLAPolicyConfig(seed=config.seed, torch_threads=0), robot, model=model, tokenizer=tokenizer)
    policy.version = version
    low, high = robot.action_feature.bounds()
    safety = SafetyFilter(SafetyConfig(), low, high, robot.hold_action(None))
    scheduler = ChunkScheduler(InlineBackend(policy), SchedulerConfig(), lookahead=config.horizon, synchronous=True)
    controller = Controller(scheduler, config.horizon, hold=safety.hold_action)
    per_task: dict[str, list[bool]] = {t: [] for t in tasks}
    try:
        robot.connect()
        for task in tasks:
            robot.set_task(task)
            for k in range(config.eval_episodes):
                result = run_episode(robot, controller, safety, episode=k, hz=robot.fps,
                                     max_steps=config.eval_max_steps, seed=config.eval_seed + k)
                per_task[task].append(bool(result.success))
    finally:
        robot.disconnect()
        model.train(was_training)
    n = sum(len(v) for v in per_task.values())
    return {
        "success_rate": round(sum(sum(v) for v in per_task.values()) / max(n, 1), 4),
        "per_task": {t: round(sum(v) / max(len(v), 1), 4) for t, v in per_task.items()},
        "episodes_per_task": config.eval_episodes,
        "seeds": [config.eval_seed, config.eval_seed + config.eval_episodes - 1],
    }


def pretrain(config: PretrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate in simulation and checkpoint; returns the summary (also in the checkpoint's ``meta``)."""
    return train(config, evaluate=evaluate, progress=progress)


def compose_pretrain(overrides: list[str]) -> PretrainConfig:
    """``tandem pretrain`` overrides (``configs/pretrain.yaml``) -> validated PretrainConfig."""
    values = compose("pretrain", overrides)
    return build_dataclass(PretrainConfig, values, "pretrain")


def main(args: argparse.Namespace) -> int:
    """``tandem pretrain [overrides]``: behaviour cloning from a LeRobotDataset into a tiny VLA checkpoint."""
    cfg = compose_pretrain(args.overrides)
    meta = pretrain(cfg)
    last = meta["history"][-1]
    print(f"tandem pretrain: wrote {cfg.out} (version {meta['version']}, {meta['steps']} steps, "
          f"{meta['frames']} frames, {meta['train_s']} s) " + json.dumps(last), flush=True)
    return 0
