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
        samples: float32[N, P, A], N chunks sampled from the same observation in one batched call when the
            request asked for them (:data:`NUM_SAMPLES_KEY`, ``head=vgps``); ``samples[0]`` is ``actions``.
            None otherwise.
    """

    actions: np.ndarray
    features: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float16))
    policy: str = ""
    version: int = 0
    infer_s: float = 0.0
    samples: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.actions = np.asarray(self.actions, np.float32)
        if self.actions.ndim != 2:
            raise ValueError(f"Chunk.actions must be [P, A], got shape {self.actions.shape}")
        self.features = np.asarray(self.features, np.float16).reshape(-1)
        if self.samples is not None:
            self.samples = np.asarray(self.samples, np.float32)
            if self.samples.ndim != 3 or self.samples.shape[1:] != self.actions.shape or len(self.samples) < 1:
                raise ValueError(f"Chunk.samples must be [N, P, A] with [P, A] = {self.actions.shape}, "
                                 f"got shape {self.samples.shape}")

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


NUM_SAMPLES_KEY = "tandem.num_samples"
"""Observation key of a request for N base samples (int64[1]): the reply's ``Chunk.samples`` holds N chunks
sampled from that one observation (``head=vgps``). Set by :func:`request_samples`, read and removed by
:func:`infer_requests`; policies never see it."""

MAX_SAMPLES = 256


def request_samples(observation: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """A copy of ``observation`` that asks for ``n`` base samples (1 <= n <= MAX_SAMPLES)."""
    if not 1 <= int(n) <= MAX_SAMPLES:
        raise ValueError(f"num_samples must be in 1..{MAX_SAMPLES}, got {n}")
    return {**observation, NUM_SAMPLES_KEY: np.array([int(n)], np.int64)}


def requested_samples(observation: dict[str, np.ndarray]) -> int:
    """N asked for by a request (0: a plain request, one chunk and no ``samples``).

    Raises:
        ValueError: the key holds something other than one integer in 1..MAX_SAMPLES.
    """
    value = observation.get(NUM_SAMPLES_KEY)
    if value is None:
        return 0
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind not in "iu" or not 1 <= int(arr.reshape(-1)[0]) <= MAX_SAMPLES:
        raise ValueError(f"{NUM_SAMPLES_KEY} must be one integer in 1..{MAX_SAMPLES}")
    return int(arr.reshape(-1)[0])


def infer_requests(policy: BasePolicy, observations: list[dict[str, np.ndarray]], tasks: list[str]) -> list[Chunk]:
    """One chunk per request through ONE ``policy.infer_batch`` call: a request carrying
    :data:`NUM_SAMPLES_KEY` = N enters the batch N times (the policy's own noise makes each copy a new sample)
    and its reply holds them as ``samples`` float32[N, P, A] (``actions`` = sample 0, features of sample 0).

    This is how every inference backend (inline, thread, worker process, policy server) answers requests, so
    N samples per chunk boundary cost one batched call, not N calls.
    """
    counts = [requested_samples(o) for o in observations]
    if not any(counts):
        return policy.infer_batch(observations, tasks)
    sizes = [max(n, 1) for n in counts]  # batch rows per request
    flat_obs: list[dict[str, np.ndarray]] = []
    flat_tasks: list[str] = []
    for obs, task, size in zip(observations, tasks, sizes, strict=True):
        plain = {k: v for k, v in obs.items() if k != NUM_SAMPLES_KEY}
        flat_obs.extend([plain] * size)
        flat_tasks.extend([task] * size)
    chunks = policy.infer_batch(flat_obs, flat_tasks)
    out: list[Chunk] = []
    i = 0
    for n, size in zip(counts, sizes, strict=True):
        group = chunks[i: i + size]
        i += size
        first = group[0]
        if n:
            first = Chunk(actions=first.actions, features=first.features, policy=first.policy, version=first.version,
                          infer_s=sum(c.infer_s for c in group), samples=np.stack([c.actions for c in group]))
        out.append(first)
    return out
