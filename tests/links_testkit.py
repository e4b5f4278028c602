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


class ArrayWeights:
    """A WeightsConsumer (``tandem.runtime.links.weights``) that holds the latest arrays as they are.

    Args:
        schema: name -> (dtype, shape) accepted.
        arrays: initial arrays (default: zeros of the schema).
    """

    def __init__(self, schema: dict[str, tuple[str, tuple[int, ...]]], arrays: dict[str, np.ndarray] | None = None) -> None:
        self._schema = {k: (str(np.dtype(d)), tuple(s)) for k, (d, s) in schema.items()}
        self.arrays = arrays or {k: np.zeros(s, d) for k, (d, s) in self._schema.items()}
        self.version = 0

    def weights_schema(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The accepted schema."""
        return dict(self._schema)

    def prepare_weights(self, arrays: dict[str, np.ndarray], version: int) -> dict[str, np.ndarray]:
        """Read-only copies of the arrays."""
        out = {k: np.array(v) for k, v in arrays.items()}
        for v in out.values():
            v.flags.writeable = False
        return out

    def load_weights(self, prepared: dict[str, np.ndarray], version: int) -> None:
        """Swap the dict."""
        self.arrays, self.version = prepared, version
