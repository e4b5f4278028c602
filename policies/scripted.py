"""A scripted base policy: MetaWorld's expert with configurable noise and bias, emitting chunks.

The expert is a state-feedback controller, so a chunk of P actions is the expert's action for the
observed state held for P ticks (zero-order hold), plus per-step Gaussian noise and a constant bias.
With P=1 and no noise it is the closed-loop expert; with noise, bias or long chunks it is an
imperfect base policy for tests and post-training experiments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tandem.core.validate import in_range, non_negative, one_of
from tandem.hardware.features import STATE_KEY
from tandem.hardware.metaworld_robot import ACTION_DIM, TASK_INSTRUCTIONS, expert_for, task_for_instruction
from tandem.policies.base import BasePolicy, Chunk


@dataclass
class ScriptedPolicyConfig:
    """Scripted expert settings.

    Attributes:
        type: registry key, always "scripted".
        task: MetaWorld task whose expert to use ("auto": the task named by each request's instruction).
        chunk_length: P, actions per chunk.
        noise_std: std of Gaussian noise added to every action element.
        bias: constant added to every action element.
        seed: noise seed.
        latency_s: simulated inference time in seconds (sleeps in ``infer``): stands in for a heavy
            VLA in tests and benchmarks of asynchronous inference.
    """

    type: str = "scripted"
    task: str = "auto"
    chunk_length: int = 1
    noise_std: float = 0.0
    bias: float = 0.0
    seed: int = 0
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if self.task != "auto":
            one_of("policy.task", self.task, TASK_INSTRUCTIONS)
        in_range("policy.chunk_length", self.chunk_length, 1, 1000)
        non_negative("policy.noise_std", self.noise_std)
        in_range("policy.latency_s", self.latency_s, 0.0, 600.0)


class ScriptedPolicy(BasePolicy):
    """MetaWorld expert as a chunking base policy (no features). ``robot`` is unused (the expert reads the state)."""

    name = "scripted"

    def __init__(self, config: ScriptedPolicyConfig, robot: object = None) -> None:
        self.config = config
        self.chunk_length = config.chunk_length
        self.action_dim = ACTION_DIM
        self.feature_dim = 0
        self._experts: dict[str, object] = {}
        self._rng = np.random.default_rng(config.seed)

    def infer(self, observation: dict[str, np.ndarray], task: str) -> Chunk:
        """Expert action for ``observation.state``, held for P ticks, plus noise and bias."""
        t = time.perf_counter()
        name = self.config.task if self.config.task != "auto" else task_for_instruction(task)
        if name not in self._experts:
            self._experts[name] = expert_for(name)
        a = np.asarray(self._experts[name].get_action(observation[STATE_KEY]), np.float32)
        actions = np.repeat(a[None], self.chunk_length, axis=0) + self.config.bias
        if self.config.noise_std > 0:
            actions = actions + self._rng.normal(0, self.config.noise_std, actions.shape).astype(np.float32)
        actions = np.clip(actions, -1.0, 1.0)
        if self.config.latency_s > 0:
            time.sleep(max(0.0, self.config.latency_s - (time.perf_counter() - t)))
        return Chunk(actions=actions, policy=self.name, version=self.version, infer_s=time.perf_counter() - t)
