"""V-GPS (value-guided policy steering): best of N base samples under the critic, no head network.

At each chunk boundary the base policy has sampled N chunks from one observation in one batched call
(``Chunk.samples``, asked for by ``tandem.runtime.inference.backends.SampleRequests``); the controller
hands their H-tick windows to :meth:`VGPSHead.choose`, which scores them with the robot's copy of the
critic through the same operator the learner uses (``tandem.policies.heads.select``: argmax of the
critic's pessimistic aggregate, ties to sample 0) and the controller runs the chosen sample as the base
for the next ``head_stride`` ticks. Nothing but the critic is trained (``value/objectives/dqc.py``:
``ExpectileCriticObjective``, whose backup needs no next action).

Until the first critic weights arrive (no selector), and with N = 1, there is nothing to choose: the base
runs unchanged.

Shapes: S state, F features, H chunk ticks, A actions, N samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tandem.core.validate import in_range
from tandem.hardware.features import STATE_KEY
from tandem.policies.base import MAX_SAMPLES
from tandem.policies.heads.config import check_dims

Selector = Callable[[np.ndarray, np.ndarray, np.ndarray], int]
"""(state float32[S], features float32[F], candidates float32[N, H, A]) -> index of the chunk to run."""


@dataclass
class VGPSHeadConfig:
    """The V-GPS selection on the robot.

    Attributes:
        state_dim, feature_dim, horizon, action_dim: S, F, H, A (from the data).
        num_samples: N base samples per chunk boundary (``head.num_samples``), 1..MAX_SAMPLES.
        state_key: observation key of the state vector.
    """

    state_dim: int = 39
    feature_dim: int = 0
    horizon: int = 10
    action_dim: int = 4
    num_samples: int = 8
    state_key: str = STATE_KEY

    def __post_init__(self) -> None:
        check_dims(self)
        in_range("head.num_samples", self.num_samples, 1, MAX_SAMPLES)


class VGPSHead:
    """Picks one of N base samples with the critic (module docstring). Satisfies the controller's ``Head``
    protocol (its :meth:`correction` is zero: it never edits a chunk) and its sampling-head extension
    (``num_samples`` and :meth:`choose`).

    Attributes:
        version: the critic weights' version it selects with (0 before the first set): what the robot's
            choice depends on, shown as the episode's head version.
        last_choice, last_score: the index and critic score of the last chosen sample (None before any).
    """

    def __init__(self, config: VGPSHeadConfig, critic: object | None = None) -> None:
        self.config = config
        self.critic = critic
        self.selector: Selector | None = None
        self.last_choice: int | None = None
        self.last_score: float | None = None

    @property
    def num_samples(self) -> int:
        """N, the base samples each request asks for."""
        return self.config.num_samples

    @property
    def version(self) -> int:
        """The critic's weights version (0 without a critic or before its first weights)."""
        return int(getattr(self.critic, "version", 0)) if self.selector is not None else 0

    def set_selector(self, selector: Selector | None) -> None:
        """Install the selector (``select.make_selector(critic)``); None: run the base unchanged."""
        self.selector = selector

    def correction(self, observation: dict[str, np.ndarray], features: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Zeros float32[H, A]: V-GPS chooses among base samples (:meth:`choose`), it never edits one."""
        return np.zeros_like(np.asarray(base, np.float32))

    def choose(self, observation: dict[str, np.ndarray], features: np.ndarray, samples: np.ndarray) -> int | None:
        """The index of the sample to run, or None to run the base plan unchanged (no critic yet, or N = 1).

        Args:
            observation: the current observation (its ``state_key`` entry: float[S]).
            features: float[F], the base policy's features (empty: zeros).
            samples: float32[N, H, A], the N base samples' windows from this tick on.
        """
        samples = np.asarray(samples, np.float32)
        if self.selector is None or len(samples) < 2:
            return None
        cfg = self.config
        state = np.asarray(observation[cfg.state_key], np.float32).reshape(-1)
        if state.size != cfg.state_dim:
            raise ValueError(f"state has {state.size} values, the critic expects state_dim={cfg.state_dim}")
        feats = np.asarray(features, np.float32).reshape(-1)
        if feats.size == 0:
            feats = np.zeros(cfg.feature_dim, np.float32)
        elif feats.size != cfg.feature_dim:
            raise ValueError(f"features have {feats.size} values, the critic expects feature_dim={cfg.feature_dim}")
        index = int(self.selector(state, feats, samples))
        self.last_choice = index
        self.last_score = getattr(self.selector, "last_score", None)
        return index
