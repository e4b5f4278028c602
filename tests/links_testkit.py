"""Helpers shared by the link tests: fake chunk records, free ports, waiting."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import numpy as np

from tandem.protocol.chunk_record import ChunkRecord


def make_record(robot: str, episode: int, chunk: int, horizon: int = 10, action_dim: int = 4, state_dim: int = 39,
                intervention: bool = False, seed: int | None = None) -> ChunkRecord:
    """A ChunkRecord with random content (deterministic per key)."""
    rng = np.random.default_rng(seed if seed is not None else hash((robot, episode, chunk)) % (2**32))
    inter = np.zeros(horizon, bool)
    if intervention:
        inter[horizon // 2 :] = True
    return ChunkRecord(
        robot_id=robot, episode_id=episode, chunk_index=chunk, task="pick the block",
        state=rng.standard_normal(state_dim).astype(np.float32),
        features=rng.standard_normal(8).astype(np.float16),
        base=rng.standard_normal((horizon, action_dim)).astype(np.float32),
        head=np.zeros((horizon, action_dim), np.float32),
        executed=rng.standard_normal((horizon, action_dim)).astype(np.float32),
        reward=rng.random(horizon).astype(np.float32),
        valid=np.ones(horizon, bool), intervention=inter, takeover_start=np.zeros(horizon, bool),
        done=False, truncated=False, head_version=0, base_version=0,
        obs_time=np.arange(horizon, dtype=np.float64), send_time=np.arange(horizon, dtype=np.float64) + 0.01,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
