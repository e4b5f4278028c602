"""The base policy contract: one method, ``infer(observation) -> Chunk``.

A base policy maps an observation dict (see ``tandem.hardware.robot.Robot``) plus the task's
language instruction to an action chunk. Wrappers add behaviour (async worker, remote server)
without the runtime knowing which one it holds.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from tandem.core.errors import TandemError


class PolicyLoadError(TandemError, RuntimeError):
    """A policy cannot be built: its directory is missing or corrupt, or it does not fit the robot."""


@dataclass
class Chunk:
    """An action chunk proposed by a base policy from one observation.

    Attributes:
        actions: float32[P, A], actions for the P ticks starting at the observation's tick.
        features: float16[F], the policy's embedding of the observation (empty if it has none).
        policy: policy name.
        version: weights version of the policy that produced it.
        infer_s: inference wall time in seconds.
    """

    actions: np.ndarray
    features: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float16))
    policy: str = ""
    version: int = 0
    infer_s: float = 0.0

    def __post_init__(self) -> None:
        self.actions = np.asarray(self.actions, np.float32)
        if self.actions.ndim != 2:
            raise ValueError(f"Chunk.actions must be [P, A], got shape {self.actions.shape}")
        self.features = np.asarray(self.features, np.float16).reshape(-1)

    @property
    def length(self) -> int:
        """P, the number of ticks covered."""
        return int(self.actions.shape[0])


class BasePolicy(abc.ABC):
    """A base policy. Subclasses set ``chunk_length`` (P), ``action_dim`` (A), ``feature_dim`` (F).

    Registered policies are constructed as ``Policy(config, robot)``; ``robot`` (not connected)
    provides the observation and action schemas the policy must match.
    """

    name: str = "policy"
    chunk_length: int = 1
    action_dim: int = 0
    feature_dim: int = 0
    version: int = 0

    @abc.abstractmethod
    def infer(self, observation: dict[str, np.ndarray], task: str) -> Chunk:
        """Propose a chunk for ``observation`` and the language instruction ``task``."""

    def infer_batch(self, observations: list[dict[str, np.ndarray]], tasks: list[str]) -> list[Chunk]:
        """One chunk per (observation, task); policies that batch on the accelerator override this."""
        return [self.infer(o, t) for o, t in zip(observations, tasks, strict=True)]

    def reset(self) -> None:
        """Forget per-episode state (called at each episode start)."""

    def close(self) -> None:
        """Release resources (worker processes, sockets)."""
