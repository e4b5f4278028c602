"""A gym-hil-shaped environment through the gymnasium adapter: success reported as ``info["succeed"]``,
end-effector delta actions (hold = zero motion). gym-hil itself is not installed here; this env has its
interface: dict observations ``agent_pos`` / ``environment_state``, a Box of deltas, ``succeed`` in info."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from tandem.core.errors import ConfigError
from tandem.hardware.features import STATE_KEY
from tandem.hardware.gym_robot import GymRobot, GymRobotConfig
from tandem.policies.base import BasePolicy, Chunk
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.loop import run_episode
from tandem.runtime.control.safety import SafetyConfig, SafetyFilter
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend

ENV_ID = "TandemTinyHilReach-v0"


class TinyHilReach(gym.Env):
    """A point end effector moved by clipped deltas (0.05 per unit) toward a cube; ``succeed`` within 2 cm."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict({
            "agent_pos": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
            "environment_state": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)

    def _obs(self):
        return {"agent_pos": self.ee.copy(), "environment_state": self.cube.copy()}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.ee = np.zeros(3, np.float32)
        self.cube = np.array([0.3, -0.2, 0.1], np.float32)
        return self._obs(), {}

    def step(self, action):
        self.ee = np.clip(self.ee + 0.05 * np.clip(action, -1, 1), -1, 1).astype(np.float32)
        succeed = bool(np.linalg.norm(self.ee - self.cube) < 0.02)
        return self._obs(), float(succeed), succeed, False, {"succeed": succeed}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=TinyHilReach)


class ToCube(BasePolicy):
    """Deltas toward the cube, from the state (agent_pos, environment_state)."""

    name = "to-cube"
    chunk_length, action_dim = 1, 3

    def infer(self, observation, task):
        state = observation[STATE_KEY]
        delta = np.clip((state[3:] - state[:3]) / 0.05, -1, 1)
        return Chunk(actions=delta[None].astype(np.float32))


def config(**kwargs) -> GymRobotConfig:
    values = dict(env_id=ENV_ID, env_kwargs={}, instruction="reach the cube", state_keys=["agent_pos", "environment_state"],
                  image_keys={}, hold_key="", action_mode="delta", realtime=False, max_episode_steps=40)
    return GymRobotConfig(**{**values, **kwargs})


def episode(robot: GymRobot):
    low, high = robot.action_feature.bounds()
    safety = SafetyFilter(SafetyConfig(max_delta=1.0), low, high, robot.hold_action(None))
    controller = Controller(ChunkScheduler(InlineBackend(ToCube()), SchedulerConfig(), synchronous=True), 1,
                            hold=safety.hold_action)
    return run_episode(robot, controller, safety, episode=0, hz=robot.fps, max_steps=40, seed=0)


def test_succeed_is_a_success_by_default():
    with GymRobot(config()) as robot:
        result = episode(robot)
        assert np.array_equal(robot.hold_action(np.ones(3, np.float32)), np.zeros(3))  # deltas: hold = stop
    assert result.outcome == "success" and result.success and result.steps < 40


def test_success_keys_are_configurable():
    with GymRobot(config(success_keys=["is_success"])) as robot:  # gym-hil's key not listed: never a success
        result = episode(robot)
    assert not result.success and result.outcome == "failure"  # terminated without a success flag
    with pytest.raises(ConfigError, match="robot.success_keys"):
        config(success_keys=[])
    with pytest.raises(ConfigError, match="robot.action_mode"):
        config(action_mode="velocity")
